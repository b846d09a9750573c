#!/bin/bash
# Installs a built nfhelper .deb on this machine, checks what it put where,
# runs the installed nfhelperd (with the unit's capabilities only) in the
# demo's namespace topology, then removes and purges the package and checks
# that nothing is left: files, processes, the nft table.
#
# Usage (root, from anywhere): debian/tests/install-test.sh bin/nfhelper_*.deb
# Needs: go (for the demo), the demo's packages (`make deps`), and nft.
# Does not need systemd running: the unit is checked with systemd-analyze.
set -euo pipefail
deb=$(realpath "${1:?usage: $0 nfhelper_VERSION_ARCH.deb}")
root=$(cd "$(dirname "$0")/../.." && pwd)
export PATH="$PATH:/usr/local/go/bin"

# nfhelperd processes running the packaged binary (other nfhelperd processes,
# e.g. integration tests' builds, are not ours to judge).
packaged_daemons() {
	local pid exe
	for pid in $(pgrep -x nfhelperd || true); do
		exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
		case $exe in /usr/sbin/nfhelperd | "/usr/sbin/nfhelperd (deleted)") echo "$pid" ;; esac
	done
}
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
ok() { printf 'ok: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || fail "needs root"
conf=/etc/nfhelper/nfhelperd.yaml
unit=/lib/systemd/system/nfhelperd.service
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if dpkg-query -W -f='${db:Status-Status}' nfhelper 2>/dev/null | grep -qv '^not-installed$'; then
	step "purging an nfhelper already installed"
	dpkg -P nfhelper
fi
nft list table inet nfhelper >/dev/null 2>&1 && fail "table inet nfhelper exists before the test"

step "dpkg -i $(basename "$deb")"
dpkg -i "$deb"
[ "$(dpkg-query -W -f='${db:Status-Status}' nfhelper)" = installed ] || fail "not installed"
version=$(dpkg-query -W -f='${Version}' nfhelper)
ok "nfhelper $version installed"

step "files"
has_ctl=no
dpkg-deb -c "$deb" >"$tmp/contents"
grep -q '/usr/sbin/nfhelperctl$' "$tmp/contents" && has_ctl=yes
files=(/usr/sbin/nfhelperd "$conf" "$unit"
	/usr/share/doc/nfhelper/copyright /usr/share/doc/nfhelper/changelog.Debian.gz
	/usr/share/doc/nfhelper/README.Debian /usr/share/doc/nfhelper/README.md.gz
	/usr/share/man/man8/nfhelperd.8.gz /usr/share/nfhelper/nfhelper-notify)
[ $has_ctl = yes ] && files+=(/usr/sbin/nfhelperctl /usr/share/man/man8/nfhelperctl.8.gz)
for f in "${files[@]}"; do
	[ -e "$f" ] || fail "$f missing"
done
ok "${#files[@]} files in place (nfhelperctl: $has_ctl)"
[ -x /usr/sbin/nfhelperd ] || fail "nfhelperd not executable"
[ -x /usr/share/nfhelper/nfhelper-notify ] || fail "nfhelper-notify not executable"
dpkg-query -W -f='${Conffiles}\n' nfhelper | grep -q "^ $conf " || fail "$conf is not a conffile"
ok "$conf is a conffile"
out=$(dpkg --verify nfhelper) || true
[ -z "$out" ] || fail "dpkg --verify: $out"
ok "dpkg --verify clean"
for p in nfhelperd $([ $has_ctl = yes ] && echo nfhelperctl); do
	man -w "$p" >/dev/null || fail "man $p: not found"
	LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings "$p" 2>"$tmp/manwarn" >/dev/null
	[ ! -s "$tmp/manwarn" ] || fail "man $p: $(cat "$tmp/manwarn")"
done
ok "man pages render without warnings"

step "not enabled, not started"
[ ! -e /etc/systemd/system/multi-user.target.wants/nfhelperd.service ] || fail "nfhelperd.service enabled on install"
[ -z "$(packaged_daemons)" ] || fail "nfhelperd running after install"
ok "nfhelperd.service disabled, no nfhelperd process"

step "nfhelperd --help"
/usr/sbin/nfhelperd --help >"$tmp/help" 2>&1 || fail "--help exited $?: $(cat "$tmp/help")"
grep -q -- '-config' "$tmp/help" || fail "--help does not mention -config"
ok "--help exits 0 and lists the options"

step "nfhelperd --check-config on the shipped file (configures nothing)"
if /usr/sbin/nfhelperd --check-config --config "$conf" >"$tmp/out" 2>"$tmp/err"; then
	fail "the shipped example config passed --check-config: $(cat "$tmp/out")"
fi
grep -q 'no services and no helpers' "$tmp/err" || fail "unexpected error: $(cat "$tmp/err")"
ok "refused: $(head -1 "$tmp/err")"

step "nfhelperd --check-config on the shipped example, uncommented"
# From the first example key on, "#key:" and "#  ..." lines are the example;
# "# Prose" lines stay comments.
awk '/^#(services|helpers|queue):/ { on = 1 }
     on && /^#(services|helpers|queue):|^#  / { sub(/^#/, "") } { print }' "$conf" >"$tmp/example.yaml"
/usr/sbin/nfhelperd --check-config --config "$tmp/example.yaml" >"$tmp/out" 2>&1 ||
	fail "uncommented example invalid: $(cat "$tmp/out")"
ok "$(cat "$tmp/out")"
nft list table inet nfhelper >/dev/null 2>&1 && fail "--check-config installed the table"
ok "--check-config touched no nft table"

if [ $has_ctl = yes ]; then
	step "nfhelperctl"
	/usr/sbin/nfhelperctl --help >"$tmp/out" 2>&1 || fail "nfhelperctl --help: $(cat "$tmp/out")"
	grep -q status "$tmp/out" || fail "nfhelperctl --help: no status command"
	rc=0; NFHELPER_SOCKET="$tmp/none.sock" /usr/sbin/nfhelperctl status >"$tmp/out" 2>&1 || rc=$?
	[ $rc = 1 ] || fail "nfhelperctl status without a daemon: exit $rc, want 1: $(cat "$tmp/out")"
	ok "--help exits 0; status without a daemon exits 1: $(head -1 "$tmp/out")"
fi

step "systemd-analyze verify $unit"
systemd-analyze verify "$unit" >"$tmp/out" 2>&1 || fail "systemd-analyze verify: $(cat "$tmp/out")"
[ ! -s "$tmp/out" ] || fail "systemd-analyze verify: $(cat "$tmp/out")"
ok "no findings"
step "systemd-analyze security --offline=true nfhelperd.service"
systemd-analyze security --offline=true --no-pager nfhelperd.service >"$tmp/out" 2>&1 ||
	fail "systemd-analyze security: $(cat "$tmp/out")"
grep -i 'overall exposure' "$tmp/out" || fail "no score: $(cat "$tmp/out")"

step "demo topology with the installed nfhelperd, CAP_NET_ADMIN only (as the unit)"
# The unit gives the daemon CAP_NET_ADMIN and nothing else (root's other
# capabilities gone, no new privileges); setpriv does the same here.
cat >"$tmp/nfhelperd-capped" <<'WRAP'
#!/bin/sh
exec setpriv --bounding-set=-all,+net_admin --inh-caps=-all,+net_admin \
	--ambient-caps=-all,+net_admin --no-new-privs /usr/sbin/nfhelperd "$@"
WRAP
chmod 0755 "$tmp/nfhelperd-capped"
setpriv --bounding-set=-all,+net_admin --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin \
	--no-new-privs sh -c 'grep ^CapEff /proc/self/status' | grep -q 'CapEff:[[:space:]]*0000000000001000$' ||
	fail "setpriv does not leave CAP_NET_ADMIN alone"
(cd "$root" && go run ./integration/demo -bin "$tmp/nfhelperd-capped") 2>&1 | tee "$tmp/demo.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || fail "demo exited $rc"
grep -q 'table inet nfhelper removed: true' "$tmp/demo.log" || fail "demo: table not removed"
ok "demo passed with the installed daemon and CAP_NET_ADMIN only"

step "dpkg -r nfhelper"
dpkg -r nfhelper
[ ! -e /usr/sbin/nfhelperd ] || fail "/usr/sbin/nfhelperd left after remove"
[ ! -e "$unit" ] || fail "$unit left after remove"
[ -e "$conf" ] || fail "conffile $conf removed by dpkg -r (should stay until purge)"
ok "binaries and unit gone, conffile kept"

step "dpkg -P nfhelper"
dpkg -P nfhelper
[ "$(dpkg-query -W -f='${db:Status-Status}' nfhelper 2>/dev/null || echo not-installed)" = not-installed ] || fail "still known to dpkg"
[ ! -e /etc/nfhelper ] || fail "/etc/nfhelper left after purge: $(ls -A /etc/nfhelper)"
[ ! -e /usr/share/doc/nfhelper ] || fail "/usr/share/doc/nfhelper left after purge"
ok "purged: nothing left in /etc/nfhelper or /usr/share/doc/nfhelper"
[ -z "$(packaged_daemons)" ] || fail "packaged nfhelperd still running: $(packaged_daemons)"
ok "no nfhelperd process"
nft list table inet nfhelper >/dev/null 2>&1 && fail "table inet nfhelper left"
ok "no table inet nfhelper"

printf '\nPASS: nfhelper %s install test\n' "$version"
