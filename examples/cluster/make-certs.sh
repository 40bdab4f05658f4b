#!/usr/bin/env bash
# Makes the certificates examples/cluster/docker-compose.yml mounts: a CA, a server
# certificate valid for every service name of the compose file, and a client certificate
# (Redis requires one: tls-auth-clients). For a trial only — use your own PKI in production.
#   usage: make-certs.sh [DIR]   (default: examples/cluster/certs)
set -euo pipefail
dir=${1:-"$(dirname "$0")/certs"}
mkdir -p "$dir" && cd "$dir"
san="subjectAltName=DNS:localhost,IP:127.0.0.1"
for h in redis-1 redis-2 redis-3 redis-4 redis-5 redis-6 clickhouse-1 clickhouse-2; do san="$san,DNS:$h"; done
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 365 -subj "/CN=Sluice example CA" 2>/dev/null
printf '%s\nbasicConstraints=CA:FALSE\n' "$san" > ext
for name in server client; do
  openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" -days 365 -extfile ext 2>/dev/null
done
# The containers run as other users than the one who made the files.
chmod 644 ./*.crt ./*.key
rm -f ./*.csr ext
echo "certificates in $PWD"
