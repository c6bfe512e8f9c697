"""Probe 1 of load/probes: one body over the broker's max_packet_size, then small ones.

Sends one POST with a big body while a small POST is sent at the same instant on another
connection, then small POSTs one after the other. Each small request has a topic of its
own, so the subscriber's output (mosquitto_sub -v) tells which arrived. Prints markdown
table rows on stdout.
"""
import argparse
import base64
import http.client
import threading
import time


def post(port, auth, topic, body):
    """One POST on a new connection: (status, content type, body, milliseconds)."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("POST", f"/topics/{topic}?qos=1", body=body,
                     headers={"Authorization": auth, "Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        data = response.read()
        return response.status, response.getheader("Content-Type", ""), data, (time.monotonic() - started) * 1000
    except OSError as error:
        return None, "", repr(error).encode(), (time.monotonic() - started) * 1000
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True, help="USER:PASSWORD")
    parser.add_argument("--arrived", required=True, help="the subscriber's output file")
    parser.add_argument("--big", type=int, default=5000)
    parser.add_argument("--small", type=int, default=5)
    args = parser.parse_args()
    auth = "Basic " + base64.b64encode(args.user.encode()).decode()

    results = {}
    barrier = threading.Barrier(2)

    def send(name, topic, body):
        barrier.wait()
        results[name] = (topic, post(args.port, auth, topic, body))

    big = threading.Thread(target=send, args=("big", "probe1/big", b"B" * args.big))
    alongside = threading.Thread(target=send, args=("alongside", "probe1/alongside", b"small alongside"))
    big.start(); alongside.start(); big.join(); alongside.join()
    after = []
    for n in range(1, args.small + 1):
        topic = f"probe1/after-{n}"
        after.append((topic, post(args.port, auth, topic, f"small {n}".encode())))

    time.sleep(1.0)  # let the subscriber print what is still on its way
    with open(args.arrived, encoding="utf-8", errors="replace") as f:
        topics = {line.split(" ", 1)[0] for line in f}

    def cell(topic, result):
        status, _, body, ms = result
        shown = status if status is not None else body.decode(errors="replace")
        text = f"{shown} in {ms:.0f} ms"
        if status == 200:
            text += ", at the subscriber" if topic in topics else ", **not at the subscriber**"
        elif topic in topics:
            text += ", yet at the subscriber"
        return text

    topic, result = results["big"]
    status, content_type, body, ms = result
    snippet = body[:90].decode(errors="replace").replace("|", "\\|")
    print(f"| 1. {args.big}-byte body (broker max_packet_size 2000) | "
          f"{status if status is not None else snippet} in {ms:.0f} ms, "
          f"{content_type or 'no Content-Type'}: `{snippet}` |")
    print(f"| 1. small request sent alongside it | {cell(*results['alongside'])} |")
    for n, (topic, result) in enumerate(after, 1):
        print(f"| 1. small request {n} after it | {cell(topic, result)} |")


if __name__ == "__main__":
    main()
