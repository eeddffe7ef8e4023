"""HTTP beside gRPC: the same pipeline, auth, limits, deadlines, drain and metrics over HTTP/JSON.

The only package that imports starlette, uvicorn and sse-starlette (import-linter holds that).
Like ``apihelper.service.grpc``, its handlers only convert JSON <-> domain types (``convert``,
``openai``: pure functions); errors become HTTP statuses in one table (``apihelper.http_status``).
"""
