"""The OpenAPI 3.1 description of the HTTP surface, written by hand.

``tests/reliability/test_openapi_schemathesis.py`` checks it against the app's answers, so
it stays truthful: every route, parameter and error code is listed here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from bezant_trio import __version__
from bezant_trio.http.console import ASSET_NAMES
from bezant_trio.http.params import OPEN_PATHS

__all__ = ["openapi_spec"]


def _error(description: str, *codes: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [{"$ref": "#/components/schemas/Error"}],
                    "properties": {"code": {"enum": list(codes)}},
                }
            }
        },
    }


def _json(description: str, ref: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_SINCE = {
    "name": "since",
    "in": "query",
    "description": "Return events with a cursor strictly greater than this.",
    "schema": {"type": "integer", "minimum": 0, "maximum": 999999999999999999, "default": 0},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "description": "Most events to return; 0 counts as 1, values above 1000 are capped at 1000.",
    "schema": {"type": "integer", "minimum": 0, "maximum": 999999999999999999, "default": 100},
}
_WAIT = {
    "name": "wait",
    "in": "query",
    "description": "Long-poll: seconds to wait for an event after `since` before answering 204.",
    "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0},
}
_TOPIC = {
    "name": "topic",
    "in": "path",
    "required": True,
    "description": "A captured topic: orders, pnl, gap, trades, marketdata:<conid>, ntf, sts, ...",
    "schema": {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,31}(:[A-Za-z0-9_.\-]{1,64})?$"},
}
_UNAUTHORIZED = _error(
    "Missing or wrong bearer token (only when http.token is set).", "unauthorized"
)
_DISABLED = _error("Event capture is not running in this process.", "events_disabled")
_NO_CONTENT = {
    "description": "Caught up: no event after `since` (after waiting `wait` seconds).",
    "headers": {
        "x-bezant-cursor": {
            "description": "The cursor to poll with next.",
            "schema": {"type": "string"},
        }
    },
}
_EXPIRED = {
    "description": "Events after `since` are gone (retention, evicted with the log off, or a cursor from before a restart without the log): resume with since = head_cursor - 1.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CursorExpired"}}},
}


def _poll_responses(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": _json("Events after `since`.", "EventPage"),
        "204": _NO_CONTENT,
        "400": _error("A query parameter is invalid.", "invalid_query", "invalid_topic"),
        "401": _UNAUTHORIZED,
        "412": _EXPIRED,
        "503": _DISABLED,
    }
    responses.update(extra or {})
    return responses


_CONID = {
    "name": "conid",
    "in": "query",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 999999999999999999},
}


def _lazy_route(summary: str, too_many: str) -> dict[str, Any]:
    """A per-conid stream subscribed upstream on first use (marketdata, bars, book)."""
    return {
        "get": {
            "summary": summary,
            "parameters": [_CONID, _SINCE, _LIMIT, _WAIT],
            "responses": _poll_responses({"429": _error(too_many, "too_many_conids")}),
        }
    }


#: What the request gate and the Host check may answer on any route (``http.limits``, ``http.hosts``).
_HOST_NOT_ALLOWED = _error(
    "Without http.token: a Host or browser origin other than this machine's (DNS rebinding, "
    "a cross-site request).",
    "host_not_allowed",
)
_BODY_TIMEOUT = _error(
    "A request body still arriving 10 s after the request began.", "body_timeout"
)
_BODY_TOO_LARGE = _error("A request body over 64 KiB (no route takes a body).", "payload_too_large")
_AT_A_CAP = ("too_many_connections", "too_many_streams")


def _add_gate_responses(paths: dict[str, Any]) -> None:
    """Every operation's answers from in front of the routes: 403, 408, 413, the 503s at a cap."""
    for path, item in paths.items():
        for operation in item.values():
            responses = operation["responses"]
            if path not in OPEN_PATHS:
                responses["403"] = _HOST_NOT_ALLOWED
            responses["408"] = _BODY_TIMEOUT
            responses["413"] = _BODY_TOO_LARGE
            at_cap = _error(
                "The connection or stream cap is reached (http.max_connections, "
                "http.max_streams): retry after Retry-After seconds.",
                *_AT_A_CAP,
            )
            at_cap["headers"] = {"retry-after": {"schema": {"type": "string"}}}
            current = responses.get("503")
            if current is None:
                responses["503"] = at_cap
                continue
            schema = current["content"]["application/json"]["schema"]
            codes = schema.get("properties", {}).get("code", {}).get("enum")
            if codes is not None:  # an error already: one envelope, more codes
                responses["503"] = _error(
                    f"{current['description']} Or: {at_cap['description']}", *codes, *_AT_A_CAP
                )
            else:  # another body (/health's): either one
                responses["503"] = {
                    "description": f"{current['description']} Or: {at_cap['description']}",
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    schema,
                                    at_cap["content"]["application/json"]["schema"],
                                ]
                            }
                        }
                    },
                }


@cache
def openapi_spec() -> dict[str, Any]:
    """The spec served at ``/openapi.json``."""
    spec = _spec()
    _add_gate_responses(spec["paths"])
    return spec


def _spec() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bezant-trio",
            "version": __version__,
            "description": "Captured IBKR Client Portal WebSocket events as per-topic cursor logs.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
                "CursorExpired": {
                    "type": "object",
                    "required": [
                        "code",
                        "message",
                        "head_cursor",
                        "newest_cursor",
                        "reset_epoch",
                    ],
                    "properties": {
                        "code": {"const": "cursor_expired"},
                        "message": {"type": "string"},
                        "head_cursor": {
                            "type": "integer",
                            "description": "The oldest cursor still available: resume with since = head_cursor - 1.",
                        },
                        "newest_cursor": {
                            "type": "integer",
                            "description": "The newest cursor of the topic.",
                        },
                        "reset_epoch": {"type": "integer"},
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["cursor", "topic", "received_at", "reset_epoch", "payload"],
                    "properties": {
                        "cursor": {"type": "integer", "minimum": 1},
                        "topic": {"type": "string"},
                        "received_at": {"type": "string", "format": "date-time"},
                        "reset_epoch": {"type": "integer"},
                        "payload": {},
                    },
                },
                "EventPage": {
                    "type": "object",
                    "required": ["events", "next_cursor", "reset_epoch"],
                    "properties": {
                        "events": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Event"},
                        },
                        "next_cursor": {"type": "integer"},
                        "reset_epoch": {"type": "integer"},
                    },
                },
                "History": {
                    "type": "object",
                    "required": ["topic", "events", "count"],
                    "properties": {
                        "topic": {"type": "string"},
                        "events": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Event"},
                        },
                        "count": {"type": "integer"},
                    },
                },
                "Status": {
                    "type": "object",
                    "required": [
                        "connected",
                        "last_message_at",
                        "reconnect_count",
                        "uptime_seconds",
                        "reset_epoch",
                        "topics_subscribed",
                        "buffer_sizes",
                    ],
                    "properties": {
                        "connected": {"type": "boolean"},
                        "last_message_at": {"type": ["string", "null"]},
                        "reconnect_count": {"type": "integer"},
                        "uptime_seconds": {"type": "integer"},
                        "reset_epoch": {"type": "integer"},
                        "topics_subscribed": {"type": "array", "items": {"type": "string"}},
                        "buffer_sizes": {
                            "type": "object",
                            "additionalProperties": {"type": "integer"},
                        },
                        "ring_capacity": {
                            "type": "object",
                            "description": "Each topic's ring capacity (events kept in memory).",
                            "additionalProperties": {"type": "integer"},
                        },
                        "last_event_at": {
                            "type": "object",
                            "description": "When each topic's newest event still in memory was received.",
                            "additionalProperties": {"type": ["string", "null"]},
                        },
                        "wanted_conids": {"type": "array", "items": {"type": "integer"}},
                        "last_error": {"type": ["string", "null"]},
                        "frames": {"type": "object"},
                        "log": {"type": ["object", "null"]},
                        "sinks": {"type": "object"},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"enum": ["ok", "degraded", "starting", "stopping"]},
                        "connected": {"type": "boolean"},
                        "log": {"type": ["string", "null"]},
                    },
                },
                "State": {
                    "type": "object",
                    "required": ["cursor", "reset_epoch", "items"],
                    "properties": {
                        "cursor": {
                            "type": "integer",
                            "description": "The topic cursor this state reflects: follow with since=cursor.",
                        },
                        "reset_epoch": {"type": "integer"},
                        "items": {"type": "object"},
                    },
                },
                "StateItem": {
                    "type": "object",
                    "required": ["cursor", "reset_epoch", "item"],
                    "properties": {
                        "cursor": {"type": "integer"},
                        "reset_epoch": {"type": "integer"},
                        "item": {"type": "object"},
                    },
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"enum": ["ready", "not_ready"]},
                        "reason": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/events/_status": {
                "get": {
                    "summary": "Connector, ring, log and sink state.",
                    "responses": {
                        "200": _json("Status.", "Status"),
                        "401": _UNAUTHORIZED,
                        "503": _DISABLED,
                    },
                }
            },
            "/events/marketdata": _lazy_route(
                "Market data for one conid; subscribes it upstream on first use.",
                "More conids wanted than events.marketdata.max_conids.",
            ),
            "/events/bars": _lazy_route(
                "Streaming bars (smh) for one conid; subscribes them upstream on first use "
                "(the gateway allows 5 at once).",
                "More than 5 bars conids wanted (the gateway's limit).",
            ),
            "/events/book": _lazy_route(
                "The BookTrader price ladder (sbd) for one conid; subscribes it upstream on "
                "first use (one at a time).",
                "Another conid's ladder is wanted (one at a time).",
            ),
            "/state/orders": {
                "get": {
                    "summary": "The latest record of every order, merged from sor updates and resyncs.",
                    "responses": {
                        "200": _json("Every order, by orderId.", "State"),
                        "401": _UNAUTHORIZED,
                        "503": _DISABLED,
                    },
                }
            },
            "/state/orders/{orderId}": {
                "get": {
                    "summary": "The latest record of one order.",
                    "parameters": [
                        {
                            "name": "orderId",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "maxLength": 64},
                        }
                    ],
                    "responses": {
                        "200": _json("The order.", "StateItem"),
                        "401": _UNAUTHORIZED,
                        "404": _error("No such order in the state.", "unknown_order", "not_found"),
                        "503": _DISABLED,
                    },
                }
            },
            "/state/marketdata": {
                "get": {
                    "summary": "The current quote of a conid (subscribing it), or of every wanted conid.",
                    "parameters": [
                        {
                            "name": "conid",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 999999999999999999,
                            },
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The quote (with conid) or every quote (without).",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "400": _error("A bad conid.", "invalid_query"),
                        "401": _UNAUTHORIZED,
                        "429": _error(
                            "More conids wanted than events.marketdata.max_conids.",
                            "too_many_conids",
                        ),
                        "503": _DISABLED,
                    },
                }
            },
            "/state/pnl": {
                "get": {
                    "summary": "The latest PnL row per account key (DU1234.Core).",
                    "responses": {
                        "200": _json("Every row.", "State"),
                        "401": _UNAUTHORIZED,
                        "503": _DISABLED,
                    },
                }
            },
            "/events/{topic}": {
                "get": {
                    "summary": "Events of a topic after a cursor (orders, pnl, gap, marketdata:<conid>, ...).",
                    "parameters": [_TOPIC, _SINCE, _LIMIT, _WAIT],
                    "responses": _poll_responses(
                        {
                            "429": _error(
                                "More conids wanted than events.marketdata.max_conids.",
                                "too_many_conids",
                            )
                        }
                    ),
                }
            },
            "/events/{topic}/history": {
                "get": {
                    "summary": "Events from the durable log after a time or cursor.",
                    "parameters": [
                        _TOPIC,
                        {
                            "name": "since_ts",
                            "in": "query",
                            "description": "RFC 3339 timestamp (exclusive bound on received_at).",
                            "schema": {"type": "string", "format": "date-time"},
                        },
                        {
                            "name": "since_cursor",
                            "in": "query",
                            "description": "Exclusive cursor bound (instead of since_ts).",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 999999999999999999,
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "description": "Most events to return; above 5000 is capped.",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 999999999999999999,
                                "default": 500,
                            },
                        },
                    ],
                    "responses": {
                        "200": _json("Events ordered by cursor.", "History"),
                        "400": _error(
                            "A query parameter is invalid.", "invalid_query", "invalid_topic"
                        ),
                        "401": _UNAUTHORIZED,
                        "503": _error(
                            "Capture or the durable log is off.",
                            "events_disabled",
                            "events_history_disabled",
                        ),
                    },
                }
            },
            "/events/{topic}/stream": {
                "get": {
                    "summary": "A topic's events as Server-Sent Events, live, resumable.",
                    "description": (
                        "Each event is one message: `id:` its cursor, `event:` its topic, "
                        "`data:` the event JSON (as in EventPage.events). Starts after "
                        "`Last-Event-ID` (sent by a reconnecting EventSource) or `since`. "
                        "A cursor the daemon no longer keeps gets one `event: gap` message "
                        '(`cursor: null`, payload `reason: "cursor_expired"`, `skipped_from`, '
                        "`resumed_at`) whose `id:` is where the stream resumes. Idle streams "
                        "get `: heartbeat` comments every 15 s. A client too slow to take "
                        "the events gets a final `: slow client` comment and is disconnected, "
                        "and every stream ends with `: shutting down` when the daemon stops: "
                        "reconnect with Last-Event-ID."
                    ),
                    "parameters": [
                        _TOPIC,
                        _SINCE,
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "description": "Resume after this cursor; wins over `since`.",
                            "schema": {
                                "type": "integer",
                                "minimum": 0,
                                "maximum": 999999999999999999,
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "An endless text/event-stream.",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _error(
                            "A query parameter or Last-Event-ID is invalid.",
                            "invalid_query",
                            "invalid_topic",
                        ),
                        "401": _UNAUTHORIZED,
                        "429": _error(
                            "More conids wanted than events.marketdata.max_conids.",
                            "too_many_conids",
                        ),
                        "503": _DISABLED,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness and readiness; never needs the token.",
                    "security": [{}],
                    "responses": {
                        "200": _json("Serving (ok or degraded).", "Health"),
                        "503": _json("Starting or stopping.", "Health"),
                    },
                }
            },
            "/health/live": {
                "get": {
                    "summary": "Liveness: the process runs and answers; never needs the token.",
                    "security": [{}],
                    "responses": {
                        "200": {
                            "description": "Alive.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {"status": {"const": "alive"}},
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/health/ready": {
                "get": {
                    "summary": "Readiness: connected to the gateway, receiving, the log writable.",
                    "security": [{}],
                    "responses": {
                        "200": _json("Ready.", "Readiness"),
                        "503": _json("Not ready; `reason` says why, in words.", "Readiness"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition.",
                    "responses": {
                        "200": {
                            "description": "Metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                        "404": _error("Metrics are not enabled.", "not_found"),
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "The live console: an HTML page that reads this API (docs/console.md); no data, so no token.",
                    "security": [{}],
                    "responses": {
                        "200": {
                            "description": "The page (Cache-Control: no-cache, with an ETag).",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                    },
                }
            },
            "/console/{name}": {
                "get": {
                    "summary": "The console's stylesheet, script and icon; no data, so no token.",
                    "security": [{}],
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": list(ASSET_NAMES)},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The file (Cache-Control: no-cache, with an ETag).",
                            "content": {
                                "text/css": {"schema": {"type": "string"}},
                                "text/javascript": {"schema": {"type": "string"}},
                                "image/svg+xml": {"schema": {"type": "string"}},
                            },
                        },
                        "304": {"description": "Not modified (If-None-Match matched the ETag)."},
                        "401": _UNAUTHORIZED,
                        "404": _error("No such console file.", "not_found"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _UNAUTHORIZED,
                    },
                }
            },
        },
    }
