"""Requests per second of the local cloud's moto server against stock ``moto.server``.

    python -m bench.moto_server [--threads 8] [--requests 150]

Both servers are started here, one after the other, and given the same
load (``threads`` clients each doing ``requests`` PutItem calls); the
figure that matters is the ratio, measured in the same run on the same
machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import boto3

from infra.local.launcher import free_port


def requests_per_second(module: str, threads: int, requests: int) -> float:
    """Start ``python -m module`` on a free port and measure PutItem throughput."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", module, "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def client() -> object:
            return boto3.session.Session().client(
                "dynamodb", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                aws_access_key_id="bench", aws_secret_access_key="bench")

        admin = client()
        for _ in range(200):
            try:
                admin.list_tables()  # type: ignore[attr-defined]
                break
            except Exception:
                time.sleep(0.05)
        admin.create_table(  # type: ignore[attr-defined]
            TableName="bench", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])
        clients = [client() for _ in range(threads)]

        def work(index: int) -> None:
            for i in range(requests):
                clients[index].put_item(  # type: ignore[attr-defined]
                    TableName="bench", Item={"k": {"S": f"{index}-{i}"}})

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return threads * requests / (time.perf_counter() - started)
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> None:
    """Print both figures and their ratio."""
    parser = argparse.ArgumentParser(prog="python -m bench.moto_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--requests", type=int, default=150)
    args = parser.parse_args(argv)
    stock = requests_per_second("moto.server", args.threads, args.requests)
    ours = requests_per_second("infra.local.motoserver", args.threads, args.requests)
    print(f"moto.server              {stock:7.0f} PutItem/s")
    print(f"infra.local.motoserver   {ours:7.0f} PutItem/s")
    print(f"ratio                    {ours / stock:7.2f}")


if __name__ == "__main__":
    main()
