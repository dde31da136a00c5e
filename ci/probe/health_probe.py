#!/usr/bin/env python3
"""A stock gRPC health probe (grpcio's grpc.health.v1 client, no project code).

    health_probe.py [--timeout SECONDS] HOST:PORT...
    health_probe.py --tls-ca CA --tls-cert CERT --tls-key KEY SERVICE=HOST:PORT...

Asks each address's overall health (service ""); prints one line per
address, `HOST:PORT SERVING` or `HOST:PORT <status or error>`, and exits 0
only when every one answered SERVING. With the TLS options it speaks mutual
TLS, presenting CERT and checking each server's certificate against CA and
the name SERVICE (the DNS SAN StreamGate's certificates carry). Used by
tests/cluster.rs and tests/mtls.rs.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel_to(target: str, creds):
    if creds is None:
        return target, grpc.insecure_channel(target)
    name, _, address = target.partition("=")
    options = [("grpc.ssl_target_name_override", name)]
    return address, grpc.secure_channel(address, creds, options=options)


def check(target: str, timeout: float, creds) -> str:
    address, channel = channel_to(target, creds)
    with channel:
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
    parser.add_argument("--tls-ca", help="the cluster CA (PEM)")
    parser.add_argument("--tls-cert", help="this client's certificate (PEM)")
    parser.add_argument("--tls-key", help="its key (PEM)")
    args = parser.parse_args()
    creds = None
    if args.tls_ca:
        with open(args.tls_ca, "rb") as ca, open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
            creds = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
    failed = 0
    for target in args.addresses:
        status = check(target, args.timeout, creds)
        address = target.partition("=")[2] if creds else target
        print(f"{address} {status}", flush=True)
        failed += status != "SERVING"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
