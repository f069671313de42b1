#!/usr/bin/env bash
# Writes the training text the project uses into data/ (nothing is downloaded: Debian packages
# installed by scripts/setup.sh provide it):
#   data/kjv.txt   the King James Bible (bible-kjv, bible-kjv-text), one verse per line, 4.4 MB
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
if [ ! -s data/kjv.txt ]; then
  bible -f "gen1:1-rev22:21" > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi
wc -c data/kjv.txt
