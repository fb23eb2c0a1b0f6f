"""The resource detector's public path (the `codecarbon` entry point of
`opentelemetry_resource_detector`); it lives in `carbonspan.otel.resource`."""

from carbonspan.otel.resource import CodeCarbonResourceDetector

__all__ = ["CodeCarbonResourceDetector"]
