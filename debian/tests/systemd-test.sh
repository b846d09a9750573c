#!/bin/bash
# Runs the packaged nfhelperd.service under a real systemd: boots this
# machine's own OS in a throw-away systemd-nspawn container (a tmpfs overlay
# over /, its own network namespace), installs the .deb there and checks the
# unit: not started on install, start, control socket, reload (good and bad
# file), take-over after SIGKILL, restart after SIGKILL, hand-over in place
# (SIGUSR2), stop (table gone), the security score, purge.
# For machines where systemd is not PID 1; nothing on the host changes.
#
# Usage (root): debian/tests/systemd-test.sh bin/nfhelper_*.deb
# Needs: systemd-container (systemd-nspawn), util-linux (unshare, script).
set -euo pipefail
deb=$(realpath "${1:?usage: $0 nfhelper_VERSION_ARCH.deb}")
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/root" "$tmp/share"
cp "$deb" "$tmp/share/nfhelper.deb"

cat >"$tmp/share/nfhtest.target" <<'UNIT'
[Unit]
Description=nfhelper unit test
AllowIsolate=yes
Wants=nfhtest.service
UNIT
cat >"$tmp/share/nfhtest.service" <<'UNIT'
[Unit]
Description=nfhelper unit test runner
After=basic.target
[Service]
Type=oneshot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
ExecStart=/bin/bash /nfhtest/inside.sh
UNIT

cat >"$tmp/share/inside.sh" <<'INSIDE'
set -uo pipefail
fail() { echo "SYSTEMD-TEST FAIL: $*"; journalctl -u nfhelperd --no-pager | tail -30; systemctl exit 1; exit 1; }
ok() { echo "systemd-test ok: $*"; }
active() { systemctl is-active --quiet nfhelperd; }
waitfor() { # waitfor SECONDS COMMAND...
	local n=$(($1 * 10)); shift
	until "$@"; do n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 0.1; done
}
table() { nft list table inet nfhelper >/dev/null 2>&1; }
mainpid() { systemctl show -P MainPID nfhelperd; }

# A policy-rc.d that forbids service actions (as in container images) would
# hide what the maintainer scripts do; this is the container's copy.
rm -f /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive dpkg -i /nfhtest/nfhelper.deb || fail "dpkg -i"
sleep 1
active && fail "started on install"
[ "$(systemctl is-enabled nfhelperd)" = disabled ] || fail "is-enabled: $(systemctl is-enabled nfhelperd)"
ok "installed: disabled and inactive"

cat >/etc/nfhelper/nfhelperd.yaml <<'YAML'
services:
  - name: ftp
    vip: 198.51.100.10:21
    scheduler: rr
    helper: ftp
    real_servers:
      - address: 10.0.0.11:21
      - address: 10.0.0.12:21
YAML
systemctl enable --now nfhelperd || fail "enable --now"
waitfor 20 sh -c 'journalctl -u nfhelperd -o cat | grep -q "msg=ready"' || fail "no ready line"
active || fail "not active"
table || fail "no table inet nfhelper"
pid=$(mainpid)
ok "started: pid $pid, table inet nfhelper installed"
grep -E '^Cap(Eff|Bnd|Amb)' /proc/$pid/status
grep -q 'CapBnd:[[:space:]]*0000000000001000$' /proc/$pid/status || fail "bounding set is not CAP_NET_ADMIN"
grep -q '^NoNewPrivs:[[:space:]]*1' /proc/$pid/status || fail "NoNewPrivs not set"
grep -q '^Seccomp:[[:space:]]*2' /proc/$pid/status || fail "no seccomp filter"
ok "CAP_NET_ADMIN only, no new privileges, seccomp filter"

if [ -x /usr/sbin/nfhelperctl ]; then
	for c in status services conns check rules; do
		# check exits 1 here because the container does not forward: that
		# must be its only failing check.
		if ! nfhelperctl "$c" >/tmp/ctl.out 2>&1; then
			if [ "$c" != check ] || grep '^FAIL' /tmp/ctl.out | grep -qv ' forwarding '; then
				cat /tmp/ctl.out
				fail "nfhelperctl $c"
			fi
		fi
	done
	head -5 /tmp/ctl.out
	nfhelperctl status | head -3
	ok "nfhelperctl status/services/conns/check/rules through /run/nfhelper/nfhelperd.sock"
fi

systemctl reload nfhelperd || fail "reload"
waitfor 10 sh -c 'journalctl -u nfhelperd -o cat | grep -q "msg=reloaded"' || fail "no reloaded line"
[ "$(mainpid)" = "$pid" ] || fail "reload changed the pid"
ok "reload: SIGHUP, same pid"
cp /etc/nfhelper/nfhelperd.yaml /tmp/good.yaml
echo "bogus: 1" >>/etc/nfhelper/nfhelperd.yaml
systemctl reload nfhelperd 2>/dev/null && fail "reload of a bad file succeeded"
active || fail "bad reload stopped the daemon"
cp /tmp/good.yaml /etc/nfhelper/nfhelperd.yaml
ok "reload of a bad file fails, the daemon runs on"

# After a crash the table stays (traffic fails open) for the next start to
# take over (here without the automatic restart).
mkdir -p /run/systemd/system/nfhelperd.service.d
printf '[Service]\nRestart=no\n' >/run/systemd/system/nfhelperd.service.d/norestart.conf
systemctl daemon-reload
systemctl kill -s KILL --kill-whom=main nfhelperd
waitfor 10 sh -c '! systemctl is-active --quiet nfhelperd' || fail "still active after SIGKILL"
table || fail "table gone after SIGKILL: nothing for the next start to take over"
ok "SIGKILL: table inet nfhelper left, failing open"
rm -r /run/systemd/system/nfhelperd.service.d
systemctl daemon-reload
systemctl reset-failed nfhelperd
systemctl start nfhelperd || fail "start after SIGKILL"
waitfor 20 sh -c 'journalctl -u nfhelperd -o cat | grep -q "took over a stale table"' || fail "the stale table was not taken over"
waitfor 20 table || fail "no table after start"
ok "started after SIGKILL: took the table over"
pid=$(mainpid)

systemctl kill -s KILL --kill-whom=main nfhelperd
waitfor 20 sh -c '[ "$(systemctl show -P MainPID nfhelperd)" != 0 ] && [ "$(systemctl show -P MainPID nfhelperd)" != '"$pid"' ] && systemctl is-active --quiet nfhelperd' ||
	fail "not restarted after SIGKILL"
waitfor 20 table || fail "no table after restart"
journalctl -u nfhelperd -o cat | grep -E 'Main process exited|Scheduled restart' | tail -2
ok "restarted after SIGKILL: pid $(mainpid)"

# SIGUSR2: the daemon execs itself, handing its queues over; same pid.
# Its own ready line first: journald may not have it yet, and a count of
# ready lines taken before it arrived would take it for the successor's.
pid=$(mainpid)
waitfor 20 sh -c 'journalctl -u nfhelperd _PID='"$pid"' -o cat | grep -q "msg=ready"' || fail "restarted daemon never ready"
systemctl kill -s USR2 --kill-whom=main nfhelperd
waitfor 20 sh -c 'journalctl -u nfhelperd -o cat | grep -q "msg=\"handing over\""' || fail "no hand-over logged"
waitfor 20 sh -c 'journalctl -u nfhelperd -o cat | sed -n "/msg=\"handing over\"/,\$p" | grep -q "msg=ready"' || fail "not ready again after SIGUSR2"
[ "$(mainpid)" = "$pid" ] && active || fail "SIGUSR2: pid $(mainpid), want $pid, active"
table || fail "no table after the hand-over"
ok "SIGUSR2: handed over in place, pid $pid"

systemctl stop nfhelperd || fail "stop"
table && fail "table inet nfhelper left after stop"
# The directory stays (RuntimeDirectoryPreserve: keepalived's notify script
# writes the VRRP state there); the socket goes.
[ ! -e /run/nfhelper/nfhelperd.sock ] || fail "/run/nfhelper/nfhelperd.sock left after stop"
ok "stopped: table and control socket gone"

systemd-analyze security --no-pager nfhelperd.service | tail -1

systemctl start nfhelperd && waitfor 20 table || fail "second start"
dpkg -P nfhelper || fail "dpkg -P"
active && fail "running after purge"
table && fail "table left after purge"
[ ! -e /etc/nfhelper ] || fail "/etc/nfhelper left after purge"
[ ! -e /var/lib/nfhelper ] || fail "/var/lib/nfhelper (state) left after purge"
[ ! -e /etc/systemd/system/multi-user.target.wants/nfhelperd.service ] || fail "enablement left after purge"
ok "purge of a running service: stopped, table gone, files and enablement gone"
echo "SYSTEMD-TEST PASS"
systemctl exit 0
INSIDE

# nspawn refuses / itself: boot a private bind mount of it, with a tmpfs
# overlay on top, in a mount namespace of its own.
rc=0
timeout 300 script -qec "unshare -m --propagation private sh -c '
	mount --bind / $tmp/root &&
	exec systemd-nspawn --quiet --keep-unit --register=no --link-journal=no \
		--private-network --volatile=overlay -D $tmp/root \
		--bind-ro=$tmp/share:/nfhtest \
		--bind-ro=$tmp/share/nfhtest.target:/etc/systemd/system/nfhtest.target \
		--bind-ro=$tmp/share/nfhtest.service:/etc/systemd/system/nfhtest.service \
		--console=read-only -b systemd.unit=nfhtest.target'" /dev/null \
	</dev/null >"$tmp/console.log" 2>&1 || rc=$?
tr -d '\r' <"$tmp/console.log" | sed 's/\x1b\[[0-9;]*[a-zA-Z]//g' |
	grep -v -E '^\[  OK  \]|^ +(Starting|Mounting|Stopping|Unmounting)|^Failed to create symlink|^Attempted to remove disk' || true
if [ $rc = 0 ] && grep -q 'SYSTEMD-TEST PASS' "$tmp/console.log"; then
	echo "PASS: nfhelperd.service under systemd"
else
	echo "FAIL: nfhelperd.service under systemd (exit $rc)"
	exit 1
fi
