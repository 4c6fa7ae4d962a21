#!/usr/bin/env bash
# Prepares the real @db/redis client for tests/db_redis_test.ts without jsr.io:
# extracts denodrivers/redis and the denoland/std files it imports from local
# git directories, and writes an import map for them.
#
#   tests/db_redis/setup.sh OUT_DIR [DB_REDIS_GIT [STD_GIT]]
#
# DB_REDIS_GIT and STD_GIT (arguments or environment variables) are git
# directories (bare clones or .git folders) of github.com/denodrivers/redis
# and github.com/denoland/std. OUT_DIR receives:
#
#   redis/            @db/redis at DB_REDIS_COMMIT
#   std/<package>/    each @std package its non-test code imports, plus the
#                     packages those import, from the first of STD_COMMITS
#                     whose version satisfies @db/redis's specifier
#   import_map.json   "@db/redis" (and its other exports) → redis/, each
#                     `jsr:@std/…` specifier of @db/redis → std/, and, scoped
#                     to std/, the bare `@std/…` imports std used at the time
#   sources.txt       the commits used
#
# The std copies start with `// @ts-nocheck`: Deno does not type-check jsr:
# modules, but would check these local files.
#
# Then, with `deno` on PATH, it checks that redis/mod.ts type-checks.
#
# Defaults: @db/redis 0.41.2 (f5d5051, "bump Deno to 2.9.0"; same code as the
# v0.41.2 tag); std's release 2024.08.16, which published @std/io 0.224.5
# (pinned by @db/redis) with async 1.0.3, bytes 1.0.2 and collections 1.0.5
# (all ^1), and std's release 2024.09.12, the first with @std/random 0.1.0
# (pinned; imported by @db/redis/experimental/cluster only).
set -euo pipefail

usage() {
  sed -n '2,8s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

[[ $# -ge 1 && $# -le 3 && -n "$1" ]] || usage
out=$1
db_git=${2:-${DB_REDIS_GIT:-}}
std_git=${3:-${STD_GIT:-}}
[[ -n "$db_git" && -n "$std_git" ]] || usage
DB_REDIS_COMMIT=${DB_REDIS_COMMIT:-f5d5051f48a2c8563dc395d49a631b8ce8208920}
STD_COMMITS=${STD_COMMITS:-f7f275bd3bd12d1f90c02b1f7fc6349790bc5a6c c5d7930d5700dbbbedea607f9cf3e50acdc33e2d}

fail() {
  echo "setup.sh: $*" >&2
  exit 1
}

for commit in $STD_COMMITS; do
  git --git-dir="$std_git" cat-file -e "$commit^{commit}" 2>/dev/null ||
    fail "Cannot find std commit $commit in STD_GIT ($std_git)"
done
git --git-dir="$db_git" cat-file -e "$DB_REDIS_COMMIT^{commit}" 2>/dev/null ||
  fail "Cannot find @db/redis commit $DB_REDIS_COMMIT in DB_REDIS_GIT ($db_git)"

mkdir -p "$out"
rm -rf "$out/redis" "$out/std" "$out/import_map.json" "$out/sources.txt"
mkdir "$out/redis" "$out/std"
git --git-dir="$db_git" archive "$DB_REDIS_COMMIT" | tar -x -C "$out/redis"

# The value of `"key": "value"` on its own line of a deno.json.
json_field() { sed -n "s|^ *\"$2\": *\"\([^\"]*\)\".*|\1|p" "$1" | head -n 1; }

# Every `"./sub": "./file"` line of a deno.json's exports, as "/sub|file"
# ("|file" for ".").
json_exports() { sed -n 's#^ *"\.\(/[^"]*\)\{0,1\}": *"\./\([^"]*\)".*#\1|\2#p' "$1"; }

# Whether `version` satisfies `range`: an exact version, or ^X[.Y[.Z]] with
# X >= 1 (same major, not lower).
satisfies() {
  local range=$1 version=$2 want
  case $range in
    ^0* | *[\<\>=~*\ ]*) fail "Cannot match version range '$range'" ;;
    ^*)
      want=${range#^}
      want=${want%%-*} # a release satisfies its own prereleases' range
      [[ "${version%%.*}" == "${want%%.*}" &&
        "$(printf '%s\n' "$want" "$version" | sort -V | head -n 1)" == "$want" ]]
      ;;
    *) [[ "$version" == "$range" ]] ;;
  esac
}

declare -A from # package → std commit it was extracted from

# Extracts std's `package` from `commit` unless it is there already.
extract() {
  local package=$1 commit=$2
  [[ -z "${from[$package]:-}" ]] || return 0
  git --git-dir="$std_git" archive "$commit" "$package" | tar -x -C "$out/std"
  from[$package]=$commit
}

# Maps `specifier` to the file `subpath` ("" or "/sub") exports in package.
entries=()
map() {
  local specifier=$1 package=$2 subpath=$3 file
  file=$(json_exports "$out/std/$package/deno.json" |
    sed -n "s#^$subpath|##p")
  [[ -n "$file" ]] || fail "Cannot find export '.$subpath' of @std/$package"
  entries+=("$(printf '    "%s": "./std/%s/%s"' "$specifier" "$package" "$file")")
}

# @db/redis's non-test code imports std through deps/std/<name>.ts only.
mapfile -t deps < <(
  cd "$out/redis" &&
    find . -name '*.ts' -not -path './deps/*' -not -path './tests/*' \
      -not -path './benchmark/*' -not -path './tools/*' -not -name '*_test.ts' \
      -exec grep -ho 'deps/std/[a-z_]*\.ts' {} + | sort -u
)
[[ ${#deps[@]} -gt 0 ]] || fail "Cannot find @db/redis's std imports"
mapfile -t specifiers < <(
  cd "$out/redis" && grep -ho '"jsr:@std/[^"]*"' "${deps[@]}" | tr -d '"' |
    sort -u
)

for specifier in "${specifiers[@]}"; do
  rest=${specifier#jsr:@std/}
  package=${rest%%@*}
  rest=${rest#*@}
  range=${rest%%/*}
  subpath=${rest#"$range"}
  found=
  for commit in $STD_COMMITS; do
    version=$(git --git-dir="$std_git" show "$commit:$package/deno.json" \
      2>/dev/null | sed -n 's|^ *"version": *"\([^"]*\)".*|\1|p' || true)
    if [[ -n "$version" ]] && satisfies "$range" "$version"; then
      found=$commit
      break
    fi
  done
  [[ -n "$found" ]] ||
    fail "Cannot find @std/$package@$range in any of STD_COMMITS ($STD_COMMITS)"
  [[ -z "${from[$package]:-}" || "${from[$package]}" == "$found" ]] ||
    fail "Cannot take @std/$package from two commits"
  extract "$package" "$found"
  map "$specifier" "$package" "$subpath"
done

# std of that time imported its own packages by bare specifiers ("@std/bytes/
# copy") through its root import map; extract those from the same commit
# until nothing new is imported. Doc comments (" * import …") do not count.
while :; do
  added=0
  for package in "${!from[@]}"; do
    mapfile -t imported < <(
      find "$out/std/$package" -name '*.ts' -not -name '*_test.ts' \
        -exec grep -hE '^(import|export|\}).* from "@std/' {} + |
        sed -n 's|.* from "@std/\([a-z-]*\).*|\1|p' | sort -u
    )
    for dependency in "${imported[@]}"; do
      if [[ -z "${from[$dependency]:-}" ]]; then
        extract "$dependency" "${from[$package]}"
        added=1
      fi
    done
  done
  [[ $added -eq 1 ]] || break
done

# Deno does not type-check jsr: modules (they are remote), but it checks these
# local copies, and std of 2024 predates TypeScript 5.7's Uint8Array<…>
# (io/buffer.ts fails under Deno 2.9's TypeScript). Mark them unchecked, as
# they would be when loaded from jsr.io; @db/redis itself stays checked.
while IFS= read -r -d '' file; do
  { echo '// @ts-nocheck: a jsr: module, unchecked as Deno leaves remote ones'; cat "$file"; } >"$file.tmp"
  mv "$file.tmp" "$file"
done < <(find "$out/std" -name '*.ts' -print0)

scoped=()
for package in $(printf '%s\n' "${!from[@]}" | sort); do
  while IFS='|' read -r subpath file; do
    scoped+=("$(printf '      "@std/%s%s": "./std/%s/%s"' \
      "$package" "$subpath" "$package" "$file")")
  done < <(json_exports "$out/std/$package/deno.json")
done

own=()
while IFS='|' read -r subpath file; do
  own+=("$(printf '    "@db/redis%s": "./redis/%s"' "$subpath" "$file")")
done < <(json_exports "$out/redis/deno.json")

join() { local IFS=$'\n'; printf '%s' "${*/%/,}" | sed '$ s/,$//'; }
{
  echo '{'
  echo '  "imports": {'
  join "${own[@]}" "${entries[@]}"
  echo
  echo '  },'
  echo '  "scopes": {'
  echo '    "./std/": {'
  join "${scoped[@]}"
  echo
  echo '    }'
  echo '  }'
  echo '}'
} >"$out/import_map.json"

{
  echo "@db/redis $(json_field "$out/redis/deno.json" version) denodrivers/redis@$DB_REDIS_COMMIT"
  for package in $(printf '%s\n' "${!from[@]}" | sort); do
    echo "@std/$package $(json_field "$out/std/$package/deno.json" version) denoland/std@${from[$package]}"
  done
} >"$out/sources.txt"
cat "$out/sources.txt"

if command -v deno >/dev/null; then
  # --no-config: not the caller's deno.json nor @db/redis's own (its lint
  # plugin is a jsr: import).
  deno check --quiet --no-config --no-lock \
    --import-map="$out/import_map.json" "$out/redis/mod.ts"
  echo "deno check redis/mod.ts: ok"
fi
