"""Probe 3 of load/probes: thousands of idle or half-sent connections held open.

Opens COUNT TCP connections to serve at --rate a second: the even ones send nothing, the
odd ones send a request line and half a header block and stall. With them held, times a
legit curl request, reads serve's /proc status and counts what serve closed; --recheck
seconds after the last connection (past serve's header read timeout) does it all again.
Prints markdown table rows on stdout.
"""
import argparse
import collections
import os
import resource
import socket
import subprocess
import time


def proc_status(pid):
    """VmRSS, Threads and open fds of a process, as one cell."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return f"RSS {fields['VmRSS']}, {fields['Threads']} threads, {fds} open fds"


def state(sock):
    """What became of a held connection: open, closed (or reset) by the server, or answered."""
    try:
        return "answered" if sock.recv(1, socket.MSG_PEEK) else "closed"
    except BlockingIOError:
        return "open"
    except OSError:
        return "closed"


def tally(idle, half):
    """One cell: how many idle and half-sent connections serve closed or answered."""
    cells = []
    for name, socks in (("idle", idle), ("half-sent", half)):
        states = collections.Counter(map(state, socks))
        answered = f" (+{states['answered']} answered)" if states["answered"] else ""
        cells.append(f"{states['closed']}/{len(socks)} {name}{answered}")
    return ", ".join(cells)


def listen_overflows():
    """The host's TcpExt ListenOverflows counter: SYNs dropped on a full accept queue."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split()))["ListenOverflows"])
    return 0


def curl(args):
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-m", "20", "-w", "%{http_code} %{time_total}", "-u", args.user,
         "-X", "POST", "--data", "probe 3", f"http://127.0.0.1:{args.port}/topics/probe3/legit?qos=1"],
        capture_output=True, text=True).stdout.split()
    return f"{out[0]} in {float(out[1]) * 1000:.0f} ms" if len(out) == 2 else f"curl failed: {out}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="serve's process id")
    parser.add_argument("--user", required=True, help="USER:PASSWORD for curl")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=2000, help="connections opened per second")
    parser.add_argument("--recheck", type=float, default=12, help="seconds after the last connection to look again")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))

    partial = (f"POST /topics/probe3/slow?qos=1 HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
               "Content-Type: application/octet-stream\r\nAuthoriza").encode()
    idle, half, failed = [], [], []
    overflows = listen_overflows()
    started = time.monotonic()
    for i in range(args.count):
        # Paced: serve's accept queue is short, and a SYN that meets it full waits 1 s for
        # its retransmission (then 2 s more), which would stretch the opening past serve's
        # header read timeout.
        time.sleep(max(0.0, started + i / args.rate - time.monotonic()))
        try:
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=5)
            if i % 2:
                sock.sendall(partial)
            sock.setblocking(False)
            (half if i % 2 else idle).append(sock)
        except OSError as error:
            failed.append(type(error).__name__)
    opened = time.monotonic() - started
    print(f"| 3. connections opened and held (idle / half-sent / failed) | {len(idle)} / {len(half)} / {len(failed)} "
          f"in {opened:.1f} s{' (' + ', '.join(sorted(set(failed))) + ')' if failed else ''} |")
    print(f"| 3. accept queue overflows while opening them (TcpExt ListenOverflows, whole host) "
          f"| {listen_overflows() - overflows} |")
    time.sleep(0.5)
    print(f"| 3. legit curl with them held ({time.monotonic() - started:.1f} s after the first) | {curl(args)} |")
    print(f"| 3. serve while they are held | {proc_status(args.pid)} |")
    print(f"| 3. closed by serve {time.monotonic() - started:.1f} s after the first | {tally(idle, half)} |")

    time.sleep(max(0.0, started + opened + args.recheck - time.monotonic()))
    print(f"| 3. closed by serve {time.monotonic() - started:.1f} s after the first | {tally(idle, half)} |")
    print(f"| 3. legit curl then | {curl(args)} |")
    print(f"| 3. serve then | {proc_status(args.pid)} |")
    for sock in idle + half:
        sock.close()


if __name__ == "__main__":
    main()
