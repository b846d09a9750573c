#!/bin/sh
# Builds bin/nfhelper_<version>_<arch>.deb from a copy of the source tree
# (`make deb`). Usage: debian/build-deb.sh [OUTDIR]   (default bin)
#
# Version: $DEB_VERSION if set; else from git: a v* tag at HEAD gives
# <tag>-<rev>, commits after it <tag>+git<n>.<hash>-<rev>, and without a tag
# a snapshot after debian/changelog's version,
# <upstream>+git<commit date.time>.<hash>-<rev>. Outside git: debian/changelog's.
# A version other than the changelog's gets a changelog entry in the copy.
set -eu
cd "$(dirname "$0")/.."
out=${1:-bin}
mkdir -p "$out"
out=$(cd "$out" && pwd)

base=$(dpkg-parsechangelog -S Version)
base_time=$(dpkg-parsechangelog -S Timestamp)
maint=$(dpkg-parsechangelog -S Maintainer)
upstream=${base%-*}
rev=${base##*-}

version=${DEB_VERSION:-}
when=$base_time
what=
if [ -z "$version" ] && git rev-parse --git-dir >/dev/null 2>&1; then
	hash=$(git rev-parse --short=7 HEAD)
	when=$(git log -1 --format=%ct HEAD)
	if desc=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
		v=${desc#v}
		case $v in
		*-*-g*)
			n=${v%-g*}; n=${n##*-}
			version="${v%-*-g*}+git$n.$hash-$rev" ;;
		*) version="$v-$rev" ;;
		esac
		what="git $desc"
	else
		version="$upstream+git$(date -u -d "@$when" +%Y%m%d.%H%M%S).$hash-$rev"
		what="git commit $hash"
	fi
fi
version=${version:-$base}

stage=$out/deb
src=$stage/nfhelper-${version%-*}
rm -rf "$stage"
mkdir -p "$src"
# The working tree as git sees it (tracked and untracked, minus ignored);
# everything but bin/ and .git outside git.
if git rev-parse --git-dir >/dev/null 2>&1; then
	git ls-files -z --cached --others --exclude-standard |
		xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
		tar --null -T - -cf - | tar -xf - -C "$src"
else
	tar --exclude=./bin --exclude=./.git -cf - . | tar -xf - -C "$src"
fi

if [ "$version" != "$base" ]; then
	# Never older than the entry below it (lintian checks the order).
	[ "$when" -gt "$base_time" ] || when=$((base_time + 1))
	{
		printf 'nfhelper (%s) unstable; urgency=medium\n\n' "$version"
		printf '  * Snapshot build of %s.\n\n' "${what:-nfhelper $version}"
		printf ' -- %s  %s\n\n' "$maint" "$(LC_ALL=C date -u -R -d "@$when")"
		cat debian/changelog
	} >"$src/debian/changelog"
fi

echo "building nfhelper $version in $src"
(cd "$src" && dpkg-buildpackage -b -us -uc)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=nfhelper_${version#*:}_$arch.deb
rm -f "$out"/nfhelper_*.deb
cp "$stage/$deb" "$out/$deb"
echo "$out/$deb"
