"""The wire protocol, version 1: what a camera, a bridge or an HMI needs, and nothing else.

Only msgpack, pyzmq and the standard library (``rle`` alone uses numpy, for masks): a bridge
author can read and vendor this package without the daemon. docs/protocol.md says the same in
prose.

    messages   frame headers, their parsing and every event the daemon publishes
    rle        the mask encoding of result events
    endpoints  ZeroMQ endpoint checks for every option that takes one
    sockets    socket set-up the clients share
    curve      CURVE keys, and making a socket a client of the daemon

``from edge.protocol import FrameHeader, parse_event, ...`` keeps working: the messages are
re-exported here.
"""

from edge.protocol.messages import *  # noqa: F403
