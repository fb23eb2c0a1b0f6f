"""A minimal OTLP/HTTP (protobuf) receiver, so tests read what exporters really send."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


class Receiver:
    """Collects spans and metric data points sent to 127.0.0.1:`port`."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.points: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    receiver.take_traces(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    receiver.take_metrics(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take_traces(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for rs in request.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append({
                            "name": span.name,
                            "kind": span.kind,
                            "scope": ss.scope.name,
                            "attributes": _attrs(span.attributes),
                            "resource": resource,
                        })  # fmt: skip

    def take_metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self.lock:
            for rm in request.resource_metrics:
                resource = _attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        for p in getattr(metric, kind).data_points:
                            value = None
                            if kind in ("sum", "gauge"):
                                value = _value_of(p)
                            elif kind == "histogram":
                                value = {"count": p.count, "sum": p.sum}
                            self.points.append({
                                "name": metric.name,
                                "unit": metric.unit,
                                "kind": kind,
                                "attributes": _attrs(p.attributes),
                                "value": value,
                                "time": p.time_unix_nano,
                                "resource": resource,
                            })  # fmt: skip

    def server_spans(self) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["kind"] == 2]  # SPAN_KIND_SERVER

    def metric(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.points if p["name"] == name]


def _value_of(point: Any) -> float:
    kind = point.WhichOneof("value")
    return float(getattr(point, kind))
