"""schemathesis hooks for tests/openapi.rs (SCHEMATHESIS_HOOKS=streamgate_hooks).

The API takes raw bytes under two media types schemathesis has no
serializer for: tus PATCH bodies (application/offset+octet-stream) and
one-shot uploads (video/*). Both are sent as they are, like
application/octet-stream.
"""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
schemathesis.serializer.alias("video/mp4", "application/octet-stream")
