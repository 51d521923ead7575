"""updates.* : the pts state and differences the client's update loop polls."""

from typing import Any

from telethon.tl import functions

from services.sandbox.peers import input_channel
from services.sandbox.queries import channel_difference, difference, state_tl
from services.sandbox.rpc import Call, method


@method(functions.updates.GetStateRequest)
def get_state(call: Call, _req: Any) -> Any:
    return state_tl(call.account)


@method(functions.updates.GetDifferenceRequest)
def get_difference(call: Call, req: Any) -> Any:
    return difference(call.core.world, call.account, req.pts)


@method(functions.updates.GetChannelDifferenceRequest)
def get_channel_difference(call: Call, req: Any) -> Any:
    channel = input_channel(call.core.world, req.channel)
    return channel_difference(call.core.world, call.account, channel, req.pts, req.limit)
