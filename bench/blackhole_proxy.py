"""A TCP proxy for the benchmark: forwards to an upstream until it receives SIGUSR1, then
blackholes (stops forwarding on open connections and accepts new ones without answering).
SIGUSR2 passes traffic again. Usage: blackhole_proxy.py LISTEN_PORT UPSTREAM_HOST:PORT"""

import asyncio
import signal
import sys

blackholed = asyncio.Event()


async def pipe(reader, writer):
    try:
        while not blackholed.is_set():
            data = await reader.read(65536)
            if not data:
                break
            if blackholed.is_set():
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    # While blackholed, hold the socket open and silent.
    while blackholed.is_set():
        await asyncio.sleep(0.5)
    writer.close()


async def handle(client_reader, client_writer, upstream):
    if blackholed.is_set():
        while blackholed.is_set():
            await asyncio.sleep(0.5)
        client_writer.close()
        return
    host, port = upstream
    try:
        up_reader, up_writer = await asyncio.open_connection(host, port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))


async def main():
    listen_port = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, blackholed.set)
    loop.add_signal_handler(signal.SIGUSR2, blackholed.clear)
    server = await asyncio.start_server(lambda r, w: handle(r, w, (host, int(port))), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
