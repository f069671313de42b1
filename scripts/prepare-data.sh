#!/usr/bin/env bash
# Writes the training text the project uses into data/ (nothing is downloaded: Debian packages
# installed by scripts/setup.sh provide it):
#   data/kjv.txt      the King James Bible (bible-kjv, bible-kjv-text), one verse per line, 4.4 MB
#   data/english.txt  modern English of many kinds, 4.2 MB: the fortune cookies of `fortunes`
#                     (quotations, jokes, poems, computing lore; the ASCII-art files left out) and
#                     the Jargon File (`jargon-text`), as formatted (indentation and runs of blanks
#                     kept: real text has them, and the memory must not be thrown by them). With it
#                     the model meets English that is not the Bible's; the evaluation's text
#                     haystack (the licence texts in /usr/share/common-licenses) stays out of every
#                     training file.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
if [ ! -s data/kjv.txt ]; then
  bible -f "gen1:1-rev22:21" > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi
if [ ! -s data/english.txt ]; then
  {
    for f in /usr/share/games/fortunes/*; do
      case "$(basename "$f")" in *.dat | *.u8 | art | ascii-art) continue ;; esac
      [ -f "$f" ] || continue
      sed 's/^%$//' "$f"
    done
    zcat /usr/share/doc/jargon-text/jargon.txt.gz
  } | cat -s > data/english.txt.tmp
  mv data/english.txt.tmp data/english.txt
fi
wc -c data/kjv.txt data/english.txt
