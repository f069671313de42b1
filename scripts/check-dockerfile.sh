#!/usr/bin/env bash
# Static checks of the Dockerfile (no Docker engine runs here): every COPY source from the build
# context exists, every `--from=` names an earlier stage, every project script a RUN line calls
# exists and is executable, and every stage that runs the setup script copies it first.
# Usage: scripts/check-dockerfile.sh [Dockerfile]. Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
file="${1:-Dockerfile}"
passed=0
failed=0
check() {  # check NAME CONDITION-STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL $1"; fi
}
# Join continuation lines so each instruction is one line.
instructions="$(sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' "$file" | grep -v '^\s*#')"
stages=()
copied_setup=0
while read -r keyword rest; do
  case "${keyword^^}" in
    FROM)
      # FROM image [AS name]
      name="$(echo "$rest" | awk 'tolower($2) == "as" {print $3}')"
      [ -n "$name" ] && stages+=("$name")
      copied_setup=0
      ;;
    COPY)
      if [[ "$rest" == --from=* ]]; then
        from="${rest#--from=}"; from="${from%% *}"
        found=1
        for s in "${stages[@]}"; do [ "$s" = "$from" ] && found=0; done
        check "COPY --from=$from names an earlier stage" "$found"
        continue
      fi
      read -ra parts <<< "$rest"
      for src in "${parts[@]:0:${#parts[@]}-1}"; do
        [ -e "$src" ]; check "COPY source $src exists" $?
        [ "$src" = scripts/setup.sh ] && copied_setup=1
      done
      [ "${parts[0]}" = . ] && copied_setup=1
      ;;
    RUN)
      for script in $(echo "$rest" | grep -oE 'scripts/[A-Za-z0-9_.-]+\.sh' | sort -u); do
        [ -x "$script" ]; check "RUN uses executable $script" $?
      done
      if echo "$rest" | grep -q 'scripts/setup.sh'; then
        [ "$copied_setup" -eq 1 ]; check "setup.sh is copied before it runs" $?
      fi
      ;;
  esac
done <<< "$instructions"
for target in build cpu cuda-build cuda; do
  found=1
  for s in "${stages[@]}"; do [ "$s" = "$target" ] && found=0; done
  check "stage $target exists" "$found"
done
grep -q '^USER 10001' "$file"; check "images run as a non-root user" $?
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
