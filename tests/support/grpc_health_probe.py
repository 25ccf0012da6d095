"""A gRPC client in Python's grpcio, as a client of crossenc would be: asks the health
service over TLS and exits 0 when it says SERVING, 2 when the call fails (printing the
status), 3 on any other answer.

usage: grpc_health_probe.py HOST:PORT [CA_PEM [CLIENT_CERT_PEM CLIENT_KEY_PEM]]
Without CA_PEM the system's roots are trusted (which do not know the test's CA)."""
import sys

import grpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    target = sys.argv[1]
    ca = read(sys.argv[2]) if len(sys.argv) > 2 else None
    cert = read(sys.argv[3]) if len(sys.argv) > 4 else None
    key = read(sys.argv[4]) if len(sys.argv) > 4 else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, credentials, options=options) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda message: message,
            response_deserializer=lambda message: message,
        )
        try:
            # An empty HealthCheckRequest asks for the whole server.
            reply = check(b"", timeout=10)
        except grpc.RpcError as error:
            print(error.code().name, error.details())
            return 2
    # HealthCheckResponse { status = 1 (SERVING) }: field 1, varint 1.
    print(reply.hex())
    return 0 if reply == b"\x08\x01" else 3


if __name__ == "__main__":
    sys.exit(main())
