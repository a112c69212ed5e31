#!/usr/bin/env bash
# Installs an AgentCom sidecar on this machine: the binary, the machine's own identity (enrolled once with a join token, which is never stored), and
# a hardened systemd unit that runs each task as a uid of its own. `hubctl join-token create --print-install` prints the line to run.
# `install-sidecar.sh --help` says the rest.
set -euo pipefail
umask 022

me=install-sidecar.sh
base=/var/lib/agentcom-sidecar
state=$base/state
bin=/usr/local/bin/agentcom-sidecar
unit=/etc/systemd/system/agentcom-sidecar.service
placeholder_hub=https://hub:7420

usage() {
  cat <<'EOF'
usage: install-sidecar.sh --hub URL --join-file FILE|- [options]

Installs agentcom-sidecar as the systemd service agentcom-sidecar, running each task as a uid
of its own (--run-as-range: no accounts; a task cannot read another's environment or files,
nor signal it). The machine enrols with the join token once: it makes its own key, the
hub signs its certificate, and the token is not written anywhere.

  --hub URL        the hub: https://HOST:7420 (TLS over TCP), quic://HOST:7421 (QUIC over
                   UDP), or http://HOST:7420 (a plaintext hub: nothing is encrypted)
  --join-file FILE the file holding a join token (acj_...) from `hubctl join-token create`,
                   or - to read it from standard input; or set AGENTCOM_JOIN. Not needed
                   when the machine has enrolled already. (--join TOKEN works too, but puts
                   the token where every local user can read it: /proc/PID/cmdline.)
  --binary PATH    the agentcom-sidecar binary to install [default: agentcom-sidecar beside
                   this script, else target/release/agentcom-sidecar of this checkout]
  --slots N        tasks run at once [default: 4]
  --tag T          a tag the sidecar offers to placement (repeatable; the join token's tags are bound at enrolment)
  --work-dir DIR   where tasks run [default: /var/lib/agentcom-sidecar/work]
  --uids FIRST-LAST the uids tasks run as, one each, unused by any account [default: 61000-61999]
  --root DIR       install under DIR instead of /, as any user: the files only; making the
                   user, enrolling and systemctl are printed as "would run: ..."
  --no-start       install and enrol, but neither enable nor start the service
  -h, --help       this text

Installs /usr/local/bin/agentcom-sidecar and /etc/systemd/system/agentcom-sidecar.service;
keeps the identity in /var/lib/agentcom-sidecar/state (root's, 0700) and runs each task in a
directory of its own under the work directory (root's, 0711), which is also its home.
Running it again upgrades the binary and the unit and restarts the service.
EOF
}

die() {
  echo "$me: error: $*" >&2
  exit 1
}

usage_error() {
  echo "$me: $*" >&2
  echo "run '$me --help' for usage" >&2
  exit 2
}

hub="" join="${AGENTCOM_JOIN:-}" join_file="" binary="" slots=4 work="$base/work" root="" no_start="" uids=61000-61999
tags=()

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then usage_error "$1 needs a value"; fi
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --hub | --join | --join-file | --binary | --slots | --tag | --work-dir | --root | --uids)
      need_value "$@"
      opt=$1 value=$2
      shift 2
      ;;
    --*=*)
      opt=${1%%=*} value=${1#*=}
      case "$opt" in
        --hub | --join | --join-file | --binary | --slots | --tag | --work-dir | --root | --uids) ;;
        *) usage_error "unknown option $opt" ;;
      esac
      [ -n "$value" ] || usage_error "$opt needs a value"
      shift
      ;;
    --no-start)
      no_start=1
      shift
      continue
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) usage_error "unknown argument $1" ;;
  esac
  case "$opt" in
    --hub) hub=$value ;;
    --join)
      join=$value
      echo "$me: warning: --join puts the token on a command line every local user can read; use --join-file or AGENTCOM_JOIN" >&2
      ;;
    --join-file) join_file=$value ;;
    --binary) binary=$value ;;
    --slots) slots=$value ;;
    --tag) tags+=("$value") ;;
    --work-dir) work=$value ;;
    --root) root=$value ;;
    --uids) uids=$value ;;
  esac
done

# --- checks: all of them pass before anything is written -------------------------------------

if [ -n "$join_file" ]; then
  if [ "$join_file" = - ]; then
    IFS= read -r join || [ -n "$join" ] || die "--join-file -: no token on standard input"
  else
    [ -r "$join_file" ] || die "--join-file $join_file: cannot read it"
    IFS= read -r join <"$join_file" || [ -n "$join" ] || die "--join-file $join_file: it is empty"
  fi
  join=${join//[[:space:]]/}
fi

if [ -n "$root" ]; then
  root=$(realpath -m -- "$root")
  [ "$root" != / ] || die "--root / is this machine: leave --root out to install into /"
fi

# Values end up in the unit's ExecStart line: only characters systemd takes literally there
# (no spaces, quotes, % specifiers or $ expansions).
if [ -n "$hub" ]; then
  case "$hub" in
    https://* | quic://*) ;;
    http://*)
      cat >&2 <<EOF
$me: WARNING: $hub is plaintext.
  The link is not encrypted and the hub is not authenticated: the join token, the sidecar's
  work and its output cross the network in the clear, and anyone on the path can pose as
  the hub. Use it only for a hub on this machine, or across a network that encrypts and
  authenticates on its own (a tailnet). Use https:// or quic:// for anything else.
EOF
      ;;
    *) die "--hub $hub: the URL must start with https:// (TLS), quic:// (QUIC) or http:// (plaintext)" ;;
  esac
  [[ "$hub" =~ ^[a-z]+://[A-Za-z0-9._:-]+/?$ || "$hub" =~ ^[a-z]+://\[[0-9A-Fa-f:.]+\](:[0-9]+)?/?$ ]] \
    || die "--hub $hub: expected SCHEME://HOST:PORT (a name, an IPv4 address, or [an IPv6 address])"
  hub=${hub%/}
elif [ -z "$root" ]; then
  usage_error "--hub URL is required (https://HOST:7420 or quic://HOST:7421)"
fi

if [ -n "$join" ] && ! [[ "$join" =~ ^acj_[0-9A-Fa-f]+_[0-9A-Fa-f]+_[0-9A-Fa-f]{32}$ ]]; then
  die "--join: not a join token: expected acj_<id>_<secret>_<pin>, as \`hubctl join-token create\` prints"
fi

[[ "$slots" =~ ^[1-9][0-9]*$ ]] || die "--slots $slots: expected a whole number, 1 or more"
[[ "$uids" =~ ^([1-9][0-9]*)-([1-9][0-9]*)$ ]] || die "--uids $uids: expected FIRST-LAST, two uids above 0 (e.g. 61000-61999)"
uid_first=${BASH_REMATCH[1]} uid_last=${BASH_REMATCH[2]}
((uid_first <= uid_last)) || die "--uids $uids: FIRST is above LAST"
((uid_last - uid_first + 1 >= slots)) || die "--uids $uids: fewer uids than --slots $slots (each running task needs its own)"
if [ -z "$root" ] && command -v getent >/dev/null; then
  taken=$(getent passwd | awk -F: -v a="$uid_first" -v b="$uid_last" '$3 >= a && $3 <= b { print $1 " (" $3 ")"; exit }')
  [ -z "$taken" ] || die "--uids $uids: the account $taken uses a uid in that range; choose another"
fi

for tag in ${tags[@]+"${tags[@]}"}; do
  [[ "$tag" =~ ^[A-Za-z0-9._:=/-]+$ ]] || die "--tag $tag: letters, digits and . _ : = / - only"
done

[[ "$work" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--work-dir $work: expected an absolute path of letters, digits and . _ / -"
work=${work%/}
case "$work/" in
  /home/* | /root/* | /run/user/*)
    die "--work-dir $work: the unit hides /home, /root and /run/user (ProtectHome=yes); choose a directory under /var/lib or /srv" ;;
  "$state"/*) die "--work-dir $work: that is the sidecar's state" ;;
  "$base"/) die "--work-dir $work: choose a directory of its own, such as $base/work" ;;
  /usr/* | /etc/* | /boot/* | /proc/* | /sys/* | /dev/*) die "--work-dir $work: not under a system directory" ;;
esac

if [ -z "$root" ]; then
  [ "$(id -u)" = 0 ] || die "run it as root (sudo $me ...), or with --root DIR to write the files under DIR"
  if [ ! -d /run/systemd/system ]; then
    [ -n "$no_start" ] || die "systemd is not running on this machine (no /run/systemd/system): the service cannot start; pass --no-start to install the files and enrol anyway"
  fi
fi

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
if [ -n "$binary" ]; then
  if ! [ -f "$binary" ] || ! [ -x "$binary" ]; then die "--binary $binary: no such executable file"; fi
elif [ -f "$script_dir/agentcom-sidecar" ] && [ -x "$script_dir/agentcom-sidecar" ]; then
  binary=$script_dir/agentcom-sidecar
elif [ -f "$script_dir/../target/release/agentcom-sidecar" ] && [ -x "$script_dir/../target/release/agentcom-sidecar" ]; then
  binary=$(cd "$script_dir/../target/release" && pwd -P)/agentcom-sidecar
else
  die "no agentcom-sidecar binary: pass --binary PATH, put agentcom-sidecar beside this script, or build it in the checkout with: cargo build --release -p agentcom-sidecar"
fi

enrolled=""
if [ -f "$root$state/identity/id" ]; then enrolled=1; fi
if [ -z "$root" ] && [ -z "$enrolled" ] && [ -z "$join" ]; then
  usage_error "a join token is required (--join-file FILE, --join-file - or AGENTCOM_JOIN): this machine has not enrolled yet (make one on the hub with: hubctl join-token create)"
fi

if [ -z "$hub" ]; then
  echo "$me: no --hub: the unit names $placeholder_hub; edit its ExecStart line before it starts" >&2
  hub=$placeholder_hub
fi

would() {
  echo "would run: $*"
}


# --- the unit ------------------------------------------------------------------------------

# deploy/systemd/agentcom-sidecar.service is what this writes for `--hub https://hub:7420`
# and the defaults; keep the two the same.
write_unit() {
  local exec_start="$bin run --hub $hub --state-dir $state --work-dir $work --slots $slots --run-as-range $uids"
  local tag
  for tag in ${tags[@]+"${tags[@]}"}; do exec_start+=" --tag $tag"; done
  local writable=$base
  case "$work/" in "$base"/*) ;; *) writable+=" $work" ;; esac
  cat <<EOF
# AgentCom sidecar, as scripts/install-sidecar.sh writes it. By hand, before the first start:
#   AGENTCOM_JOIN=acj_... agentcom-sidecar enroll --hub $hub --state-dir $state
# (make the join token on the hub: hubctl join-token create), then
#   systemctl enable --now agentcom-sidecar
[Unit]
Description=AgentCom sidecar
After=network-online.target
Wants=network-online.target

[Service]
# The sidecar runs as root to make a cgroup per task in its delegated subtree, and runs each
# task as a uid of its own from $uids (no account; nothing else may use them), in a directory
# of its own under the work directory, which is also its home. A task cannot read another's
# environment or files, nor signal it. The sidecar's own state (its identity and key) stays
# root's.
ExecStartPre=/usr/bin/install -d -m 0711 $work
ExecStart=$exec_start
StateDirectory=agentcom-sidecar
# systemd hands the unit's cgroup subtree to the sidecar, which makes a cgroup per task in it.
Delegate=yes
LimitNOFILE=65536
Restart=on-failure
RestartSec=2
# 78 (EX_CONFIG): the hub revoked this sidecar, or its identity is unusable. A restart cannot
# fix that: enrol again (docs/operations.md, "The link").
RestartPreventExitStatus=78
# Each task has its own cgroup; the sidecar cancels them on SIGTERM, and systemd kills what is
# left of the unit's cgroup (the tasks' included) after the timeout.
KillMode=mixed
TimeoutStopSec=30

# Hardening. Tasks inherit all of it: they run in this sandbox too.
# The whole file system is read-only but the sidecar's directory. Tasks that must write
# elsewhere (a repository under --repo-allow, say) need it added to ReadWritePaths.
ProtectSystem=strict
ReadWritePaths=$writable
# /home, /root and /run/user are empty; each task's home is its own directory under the work directory.
ProtectHome=yes
# A /tmp and /var/tmp of the unit's own, emptied when it stops.
PrivateTmp=yes
# No process of the unit gains privileges through setuid binaries (sudo) or file capabilities.
NoNewPrivileges=yes
# Nor can it make setuid or setgid files for later.
RestrictSUIDSGID=yes
# /proc/sys and /sys are read-only; no kernel modules loaded.
ProtectKernelTunables=yes
ProtectKernelModules=yes
# Off on purpose: yes makes /sys/fs/cgroup read-only, and the sidecar writes its delegated
# subtree there (a cgroup per task, its limits, cgroup.kill). ProtectKernelTunables=yes leaves
# /sys/fs/cgroup writable.
ProtectControlGroups=no
# No switching to another execution domain (personality(2)).
LockPersonality=yes

[Install]
WantedBy=multi-user.target
EOF
}

# --- install -------------------------------------------------------------------------------

echo "installing $binary as $root$bin"
install -d "$root/usr/local/bin"
if [ -e "$root$bin" ] && [ "$(readlink -f "$binary")" = "$(readlink -f "$root$bin")" ]; then
  echo "  (already in place)"
else
  install -m 0755 "$binary" "$root$bin.new"
  mv -f "$root$bin.new" "$root$bin"
fi

install -d -m 0755 "$root$base"
install -d -m 0700 "$root$state"
# Tasks run as uids without accounts: they pass through the work directory to their own.
install -d -m 0711 "$root$work"

if [ -n "$enrolled" ]; then
  echo "already enrolled ($state/identity holds this machine's identity)${join:+; the join token was not used}"
elif [ -n "$root" ]; then
  # The token is a secret: the line says where it goes, not what it is.
  shown=TOKEN
  if [ -n "$join" ]; then shown=acj_...; fi
  would AGENTCOM_JOIN="$shown" "$bin" enroll --hub "$hub" --state-dir "$state"
else
  echo "enrolling with $hub"
  # The token goes by the environment, never on a command line.
  if ! AGENTCOM_JOIN="$join" "$bin" enroll --hub "$hub" --state-dir "$state"; then
    die "enrolment failed (see above). Check that $hub is reachable from here, and that the join token is neither used up nor expired (on the hub: hubctl join-token ls; a new one: hubctl join-token create)"
  fi
fi

echo "writing $root$unit"
install -d "$root/etc/systemd/system"
write_unit >"$root$unit.new"
chmod 0644 "$root$unit.new"
mv -f "$root$unit.new" "$root$unit"

# --- start ---------------------------------------------------------------------------------

if [ -n "$root" ]; then
  would systemctl daemon-reload
  if [ -z "$no_start" ]; then would systemctl enable --now agentcom-sidecar; fi
  echo "installed under $root"
  exit 0
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
if [ -n "$no_start" ]; then
  echo "installed; not started (--no-start). To start it: systemctl enable --now agentcom-sidecar"
  exit 0
fi
if systemctl is-active --quiet agentcom-sidecar; then
  # An upgrade: the new binary and unit take over at the restart, which stops the tasks
  # running now (docs/operations.md, "Faults").
  systemctl enable agentcom-sidecar
  systemctl restart agentcom-sidecar
  echo "restarted agentcom-sidecar"
else
  systemctl enable --now agentcom-sidecar
  echo "started agentcom-sidecar"
fi
case "$hub" in
  quic://*) echo "it dials $hub over UDP: the hub's UDP port must be open (docs/operations.md, \"QUIC and Tailscale\")" ;;
esac
echo "check it with: systemctl status agentcom-sidecar; journalctl -u agentcom-sidecar -f; on the hub: hubctl sidecars ls"
