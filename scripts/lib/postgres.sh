# Shared by scripts/test and the benchmark scripts: find a Postgres server
# or start a throwaway one.
#
#   source scripts/lib/postgres.sh
#   ensure_postgres      # exports DATABASE_URL; stops a throwaway server on exit
#
# Expects `log` and `die` to be defined by the caller.

default_database_url="postgres://postgres@127.0.0.1:5432/test"
DATABASE_URL="${DATABASE_URL:-$default_database_url}"

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() {
	# apt_install PACKAGE... : installs Debian packages, only when root.
	if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
		return 1
	fi
	log "installing with apt-get: $*"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
		apt-get update -q >/dev/null
		apt-get install -y -q --no-install-recommends "$@" >/dev/null
	fi
}

# Host and port of a postgres:// URL (defaults: 127.0.0.1, 5432).
url_host_port() {
	local rest="${1#*://}"
	rest="${rest%%/*}"
	rest="${rest%%\?*}"
	rest="${rest##*@}"
	local host port
	if [[ "$rest" == \[* ]]; then
		host="${rest%%]*}"
		host="${host#[}"
		port="${rest##*]}"
		port="${port#:}"
	elif [[ "$rest" == *:* ]]; then
		host="${rest%%:*}"
		port="${rest##*:}"
	else
		host="$rest"
		port=""
	fi
	printf '%s %s\n' "${host:-127.0.0.1}" "${port:-5432}"
}

# Whether the server behind $1 accepts connections (and, with psql, queries).
postgres_usable() {
	local url="$1"
	if command -v psql >/dev/null 2>&1; then
		PGCONNECT_TIMEOUT=3 psql "$url" -X -q -A -t -c 'select 1' >/dev/null 2>&1
	elif command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -t 3 -d "$url" >/dev/null 2>&1
	else
		local host port
		read -r host port < <(url_host_port "$url")
		timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" >/dev/null 2>&1
	fi
}

# Directory holding initdb and pg_ctl, or nothing.
find_pg_bindir() {
	local dir
	if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
		dirname "$(command -v initdb)"
		return 0
	fi
	if command -v pg_config >/dev/null 2>&1; then
		dir="$(pg_config --bindir 2>/dev/null || true)"
		if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
			echo "$dir"
			return 0
		fi
	fi
	for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
			echo "$dir"
			return 0
		fi
	done
	return 1
}

free_port() {
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' && return 0
	fi
	local port
	for port in $(seq 55432 55532); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	return 1
}

pg_tmp_dir=""
pg_ctl_bin=""
pg_user=""

# Runs a command as the user owning the throwaway cluster.
as_pg_user() {
	if [ -z "$pg_user" ]; then
		"$@"
	elif command -v runuser >/dev/null 2>&1; then
		runuser -u "$pg_user" -- "$@"
	else
		su -s /bin/sh "$pg_user" -c "$(printf '%q ' "$@")"
	fi
}

stop_throwaway_postgres() {
	if [ -n "$pg_tmp_dir" ] && [ -d "$pg_tmp_dir" ]; then
		if [ -f "$pg_tmp_dir/data/postmaster.pid" ]; then
			(cd "$pg_tmp_dir" && as_pg_user "$pg_ctl_bin" -D "$pg_tmp_dir/data" -m immediate -w stop >/dev/null 2>&1) || true
		fi
		rm -rf "$pg_tmp_dir"
	fi
	pg_tmp_dir=""
}

start_throwaway_postgres() {
	local bindir
	if ! bindir="$(find_pg_bindir)"; then
		if apt_install postgresql; then
			bindir="$(find_pg_bindir)" || die "installed postgresql but cannot find initdb"
		else
			die "no Postgres server at $DATABASE_URL and no initdb to start one.
  Install PostgreSQL (Debian: 'sudo apt-get install postgresql') and run again,
  or set DATABASE_URL to a Postgres superuser URL."
		fi
	fi
	pg_ctl_bin="$bindir/pg_ctl"

	if is_root; then
		# initdb refuses to run as root: use the postgres system user.
		pg_user=postgres
		if ! id -u "$pg_user" >/dev/null 2>&1; then
			log "creating system user $pg_user"
			useradd --system --user-group --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin "$pg_user" ||
				die "cannot create the $pg_user system user"
		fi
	fi

	# /tmp: reachable by the postgres user, and short enough for a socket path.
	local tmp_base="${TMPDIR:-/tmp}"
	if [ -n "$pg_user" ]; then
		tmp_base=/tmp
	fi
	pg_tmp_dir="$(mktemp -d "$tmp_base/switchyard-pg.XXXXXX")"
	if [ -n "$pg_user" ]; then
		chown "$pg_user" "$pg_tmp_dir"
	fi

	local port
	port="$(free_port)" || die "cannot find a free TCP port for Postgres"

	log "starting a throwaway Postgres ($bindir) on 127.0.0.1:$port"
	if ! (cd "$pg_tmp_dir" && as_pg_user "$bindir/initdb" -D "$pg_tmp_dir/data" \
		--auth=trust -U postgres --encoding=UTF8 --locale=C >"$pg_tmp_dir/initdb.log" 2>&1); then
		cat "$pg_tmp_dir/initdb.log" >&2 || true
		die "initdb failed"
	fi
	if ! (cd "$pg_tmp_dir" && as_pg_user "$pg_ctl_bin" -D "$pg_tmp_dir/data" \
		-l "$pg_tmp_dir/postgres.log" -w -t 60 \
		-o "-p $port -k $pg_tmp_dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
		start >/dev/null); then
		cat "$pg_tmp_dir/postgres.log" >&2 || true
		die "Postgres did not start"
	fi

	DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
	local i
	for i in $(seq 1 100); do
		if postgres_usable "$DATABASE_URL"; then
			return 0
		fi
		sleep 0.2
	done
	cat "$pg_tmp_dir/postgres.log" >&2 || true
	die "Postgres started but does not accept connections at $DATABASE_URL"
}

ensure_postgres() {
	trap stop_throwaway_postgres EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	if postgres_usable "$DATABASE_URL"; then
		log "using Postgres at $DATABASE_URL"
	else
		log "no usable Postgres at $DATABASE_URL"
		start_throwaway_postgres
		log "using Postgres at $DATABASE_URL"
	fi
	export DATABASE_URL
}
