#!/bin/sh
# One database and one account per service, each account with rights on its
# own database only (a service never reads another's tables, DESIGN §4).
#
# compose and components/infra mount this file into the MySQL image's
# /docker-entrypoint-initdb.d/, which sources it on the first start (empty
# data volume) as root. The passwords come from the environment,
# MYSQL_<SERVICE>_PASSWORD, and have no default; a missing or unusable one
# stops the first start with a line naming it. To create the accounts on a
# server that already has data (or a managed one), run it by hand with
# MYSQL_PWD set to the root password (docs/OPERATIONS.md, "Database accounts").
#
# kustomize reads nothing outside its folder, so k8s/components/infra keeps a
# copy as mysql-init.sh; deploy/check.sh fails when the two differ.

dialstack_sql() {
  if command -v docker_process_sql >/dev/null 2>&1; then
    # The image's helper: root over the socket of its temporary server.
    docker_process_sql
  else
    mysql --protocol="${MYSQL_PROTOCOL:-socket}" -uroot
  fi
}

dialstack_init_sql() {
  for svc in users scheduler media storage monitor; do
    var="MYSQL_$(echo "$svc" | tr '[:lower:]' '[:upper:]')_PASSWORD"
    eval "pw=\${$var:-}"
    if [ -z "$pw" ]; then
      echo "init.sh: $var is not set (the password of account dialstack_$svc)" >&2
      return 1
    fi
    # The same password goes, unescaped, into the service's mysql:// URL.
    case "$pw" in
      *[!A-Za-z0-9._~-]*)
        echo "init.sh: $var may hold only letters, digits and . _ ~ -" >&2
        return 1 ;;
    esac
    echo "CREATE DATABASE IF NOT EXISTS \`dialstack_$svc\` CHARACTER SET utf8mb4;"
    echo "CREATE USER IF NOT EXISTS 'dialstack_$svc'@'%' IDENTIFIED BY '$pw';"
    echo "ALTER USER 'dialstack_$svc'@'%' IDENTIFIED BY '$pw';"
    echo "GRANT ALL PRIVILEGES ON \`dialstack_$svc\`.* TO 'dialstack_$svc'@'%';"
  done
}

dialstack_init() {
  sql=$(dialstack_init_sql) || return 1
  printf '%s\n' "$sql" | dialstack_sql
}

if [ "${DIALSTACK_INIT_PRINT:-}" = 1 ]; then
  # For deploy/check.sh: the statements, without running them.
  dialstack_init_sql || exit 1
else
  dialstack_init || exit 1
fi
