"""Memory held by clients in the middle of a request head, against `switchyard demo` on :8080.

Usage: python3 bench/edge_head_memory.py CLIENTS PID
Opens CLIENTS connections that each send 20 bytes of a head and then a byte a second for 6 s
(under the 10 s head deadline); prints the proxy's RSS (PID) before and while they are all
connected, and the difference per connection.
"""
# RSS before and while they are connected.
import asyncio, sys, time
N = int(sys.argv[1]); PID = sys.argv[2]
def rss():
    for l in open(f"/proc/{PID}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1])
async def client(ready):
    r, w = await asyncio.open_connection("127.0.0.1", 8080)
    w.write(b"GET / HTTP/1.1\r\nHost:"); await w.drain()
    ready.append(1)
    for _ in range(6):
        await asyncio.sleep(1)
        w.write(b"a"); await w.drain()
    w.close()
async def main():
    before = rss(); ready = []
    tasks = [asyncio.create_task(client(ready)) for _ in range(N)]
    while len(ready) < N:
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    during = rss()
    print(f"clients={N} rss_before_kb={before} rss_during_kb={during} per_conn_kb={(during-before)/N:.1f}")
    await asyncio.gather(*tasks)
asyncio.run(main())
