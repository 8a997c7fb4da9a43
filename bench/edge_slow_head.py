"""Slow-head clients against a proxy on 127.0.0.1:8080 (e.g. `switchyard demo`).

Usage: python3 bench/edge_slow_head.py CLIENTS SECONDS
Each client sends a request head one byte per second (a 1000-byte header that never ends) for
at most SECONDS; prints how many connections are still open at the end and when the others
were closed (seconds after their first byte). With switchyard's default `--head-timeout 10`
every connection is closed at about 10 s; without a whole-head deadline all stay open.
"""
import asyncio, sys, time
N = int(sys.argv[1]); DUR = int(sys.argv[2])
async def client(i, state):
    r, w = await asyncio.open_connection("127.0.0.1", 8080)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    t0 = time.monotonic()
    for b in head:
        if time.monotonic() - t0 > DUR:
            break
        try:
            w.write(bytes([b])); await w.drain()
            data = await asyncio.wait_for(r.read(1), timeout=1.0)
            if data == b"":
                state["closed"].append(time.monotonic() - t0); return
        except asyncio.TimeoutError:
            continue
        except (ConnectionError, OSError):
            state["closed"].append(time.monotonic() - t0); return
    state["open"] += 1
async def main():
    state = {"closed": [], "open": 0}
    await asyncio.gather(*(client(i, state) for i in range(N)))
    c = sorted(state["closed"])
    print(f"clients={N} still_open_after_{DUR}s={state['open']} closed={len(c)}",
          f"closed_at_s min={c[0]:.1f} max={c[-1]:.1f}" if c else "")
asyncio.run(main())
