"""TLS on the public listener (SPEC "TLS at both edges").

certs.py     certificate/key pairs from PEM files: parsed, key matched, chain order, names,
             expiry; what `check` and a reload refuse or warn about
contexts.py  the SSLContexts built from one `tls:` section, chosen by SNI
listener.py  the handshake in front of each client connection: counted, bounded in time,
             never reaching routing when it fails; the contexts new handshakes use (reload)
session.py   what a request learns of its connection's TLS (version, client identity)
"""
