#!/usr/bin/env python3
"""Recording TCP relay: relay.py LISTEN_PORT UPSTREAM_PORT OUT_DIR

Accepts on 127.0.0.1:LISTEN_PORT, relays each connection to 127.0.0.1:UPSTREAM_PORT
and writes OUT_DIR/conn-N.txt: one line per read, "c <hex>" for client-to-server
bytes and "s <hex>" for server-to-client bytes, in the order they passed (each
chunk is logged before it is forwarded, so a reply never precedes its request)."""
import os, socket, sys, threading

listen_port, upstream_port, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.makedirs(out_dir, exist_ok=True)

def pump(src, dst, mark, log, lock):
    while True:
        data = src.recv(65536)
        if not data:
            break
        with lock:
            log.write(f"{mark} {data.hex()}\n")
            log.flush()
            dst.sendall(data)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass

srv = socket.create_server(("127.0.0.1", listen_port))
n = 0
while True:
    client, _ = srv.accept()
    n += 1
    upstream = socket.create_connection(("127.0.0.1", upstream_port))
    log, lock = open(os.path.join(out_dir, f"conn-{n}.txt"), "w"), threading.Lock()
    for a, b, m in ((client, upstream, "c"), (upstream, client, "s")):
        threading.Thread(target=pump, args=(a, b, m, log, lock), daemon=True).start()
