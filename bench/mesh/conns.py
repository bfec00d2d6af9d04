"""Many open TCP connections for bench/mesh/run.sh (ztunnel RSS with N tunnelled connections).

  conns.py serve PORT
      echo server; runs until killed.
  conns.py hold HOST PORT N DEADLINE_S STOP_FILE
      opens up to N connections one after the other, proves each with a 1-byte echo (so the
      tunnel behind it really exists), prints "open <count>", then holds them until STOP_FILE
      exists or DEADLINE_S seconds after the start passed; prints "closed" and exits.
Both raise RLIMIT_NOFILE to the hard limit.
"""
import asyncio
import os
import resource
import socket
import sys
import time


def raise_fd_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def echo(reader, writer):
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    writer.close()


async def serve(port):
    server = await asyncio.start_server(echo, "0.0.0.0", port, backlog=4096)
    async with server:
        await server.serve_forever()


def hold(host, port, count, deadline_s, stop_file):
    start = time.monotonic()
    deadline = start + deadline_s
    conns = []
    error = ""
    # Opening gets at most half the time budget; the rest is for holding.
    while len(conns) < count and time.monotonic() < start + deadline_s / 2:
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect((host, port))
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise OSError("no echo")
        except OSError as e:
            error = f" ({e})"
            s.close()
            break
        conns.append(s)
    print(f"open {len(conns)} in {time.monotonic() - start:.1f}s{error}", flush=True)
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    for s in conns:
        s.close()
    print("closed", flush=True)


def main():
    raise_fd_limit()
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    elif sys.argv[1] == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
