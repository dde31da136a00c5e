#!/usr/bin/env python3
"""A stock gRPC health probe (grpcio's grpc.health.v1 client, no project code).

    health_probe.py [--timeout SECONDS] HOST:PORT...

Asks each address's overall health (service ""); prints one line per
address, `HOST:PORT SERVING` or `HOST:PORT <status or error>`, and exits 0
only when every one answered SERVING. Used by tests/cluster.rs.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, timeout: float) -> str:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as e:
            return f"error {e.code().name}: {e.details()}"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addresses", nargs="+", metavar="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=2.0, help="per check, seconds")
    args = parser.parse_args()
    failed = 0
    for address in args.addresses:
        status = check(address, args.timeout)
        print(f"{address} {status}", flush=True)
        failed += status != "SERVING"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
