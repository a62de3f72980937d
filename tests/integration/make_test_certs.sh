#!/bin/sh
# make_test_certs.sh DIR: throw-away certificates for the security tests,
# made with openssl at test time (nothing is committed):
#   ca.pem/ca.key          a test CA
#   server.pem/server.key  CN=localhost, SAN DNS:localhost, IP:127.0.0.1
#   operator.pem/.key      client certificate CN=operator (no SAN: the
#                          server must match the common name)
#   worker.pem/.key        client certificate CN=worker, SAN DNS:worker
#   rogue-ca.pem, rogue.pem/.key   CN=operator signed by another CA
#   rotated.pem/.key       CN=localhost as server.pem, signed by rogue-ca:
#                          the certificate a reload (SIGHUP) rotates to
# P-256 keys: fast to make, and every TLS stack takes them. Valid 2 days.
set -eu
d=$1
mkdir -p "$d"
cd "$d"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {
    key "$1.key"
    openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" 2>/dev/null
}
# leaf NAME CA SUBJECT EXTENSIONS
leaf() {
    key "$1.key"
    openssl req -new -key "$1.key" -out "$1.csr" -subj "$3" 2>/dev/null
    printf '%b' "$4" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
        -out "$1.pem" -days 2 -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
ca ca engram-test-ca
ca rogue-ca engram-rogue-ca
leaf server ca /CN=localhost \
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'
leaf operator ca /CN=operator 'extendedKeyUsage=clientAuth\n'
leaf worker ca /CN=worker 'subjectAltName=DNS:worker\nextendedKeyUsage=clientAuth\n'
leaf rogue rogue-ca /CN=operator 'extendedKeyUsage=clientAuth\n'
leaf rotated rogue-ca /CN=localhost \
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'
