#!/usr/bin/env python3
"""A TCP proxy that delays every chunk by a fixed time each way, standing in for
a network hop to PostgreSQL on a machine without netem (README, Performance):

    scripts/pg-delay-proxy.py 15432 5432 0.5   # listen on 15432, forward to 5432, 0.5 ms each way
    TOLLGATE_STORE=postgres://postgres@127.0.0.1:15432/test tollgate serve ...

Chunks of one direction are delayed one after another (the delay is added per
read, as on a link of unbounded bandwidth but fixed latency).
"""
import asyncio, sys
LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000
async def pipe(r, w):
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            due = loop.time() + DELAY
            await asyncio.sleep(max(0, due - loop.time()))
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection('127.0.0.1', TARGET)
    await asyncio.gather(pipe(cr, sw), pipe(sr, cw))
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', LISTEN)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
