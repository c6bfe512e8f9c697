"""Probe 2 of load/probes: a password-guessing flood from one source address.

CONNS keep-alive connections, bound to SOURCE, each sending POSTs with a new wrong password
for USER as fast as answers come back, until SIGTERM/SIGINT or --max-seconds. A connection
the server closes is opened again. Prints markdown table rows on stdout at the end.
"""
import argparse
import asyncio
import base64
import collections
import signal
import time


async def worker(args, stop, counts, index):
    n = 0
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port, local_addr=(args.source, 0))
        except OSError as error:
            counts[f"connect error ({type(error).__name__})"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while not stop.is_set():
                n += 1
                credentials = f"{args.user}:wrong-{index}-{n}".encode()
                request = (
                    f"POST /topics/probe2/flood?qos=1 HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
                    f"Authorization: Basic {base64.b64encode(credentials).decode()}\r\n"
                    "Content-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\nguess"
                ).encode()
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                status = lines[0].split(" ")[1]
                headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
                if "content-length" in headers:
                    await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readline()).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                counts[status] += 1
                if headers.get("connection", "").lower() == "close":
                    counts["closed by server"] += 1
                    break
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            if not stop.is_set():
                counts[f"dropped ({type(error).__name__})"] += 1
        finally:
            writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--user", required=True)
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    counts = collections.Counter()
    started = time.monotonic()
    tasks = [asyncio.create_task(worker(args, stop, counts, i)) for i in range(args.conns)]
    try:
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    except asyncio.TimeoutError:
        stop.set()
    elapsed = time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    answers = sum(v for k, v in counts.items() if k.isdigit())
    by_status = ", ".join(f"{k}: {counts[k]}" for k in sorted(k for k in counts if k.isdigit())) or "none"
    others = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if not k.isdigit())
    print(f"| 2. flood answers by status ({args.conns} connections from {args.source}, {elapsed:.1f} s) "
          f"| {by_status}{'; ' + others if others else ''} |")
    print(f"| 2. flood answers per second | {answers / elapsed:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
