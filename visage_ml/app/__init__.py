"""The application layer (L8): the `visage` CLI, the DVC stages and the HTTP API.

Glue only: each translates its inputs (arguments, params, requests) into calls of the library
below and its results into outputs. See docs/architecture.md.
"""
