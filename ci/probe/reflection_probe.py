#!/usr/bin/env python3
"""A stock gRPC reflection client (grpcio-reflection, no project code or proto).

    reflection_probe.py [--describe SERVICE] HOST:PORT

Prints the services the address lists over server reflection, one line
`service NAME` each (sorted); with --describe, then one line
`method SERVICE/METHOD INPUT OUTPUT` per method of SERVICE, the types
resolved from the descriptors the server sends. Exits 0 when it got
answers, 1 otherwise. Used by tests/reflection.rs.
"""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("--describe", metavar="SERVICE")
    args = parser.parse_args()
    with grpc.insecure_channel(args.address) as channel:
        try:
            database = ProtoReflectionDescriptorDatabase(channel)
            for name in sorted(database.get_services()):
                print(f"service {name}", flush=True)
            if args.describe:
                service = DescriptorPool(database).FindServiceByName(args.describe)
                for method in service.methods:
                    print(
                        f"method {service.full_name}/{method.name} "
                        f"{method.input_type.full_name} {method.output_type.full_name}",
                        flush=True,
                    )
        except (grpc.RpcError, KeyError) as e:
            print(f"error {e}", flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
