"""Channels from this broker to the other brokers, one cached gRPC channel per address.

A peer is found by broker id (its registration in the metadata image) or by the address a
voter list or registration names. `--dial ID=HOST:PORT` overrides where a peer is actually
dialled (the chaos proxy sits there) without changing its identity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from semel.cluster.broker.replication import channel_options
from semel.cluster.metadata.quorum import VoterSpec
from semel.cluster.metadata.state import MetadataImage


class Peers:
    """Implements `host.PeerChannels` for a broker process."""

    def __init__(self, dial: Mapping[int, str], voters: Sequence[VoterSpec],
                 image: Callable[[], MetadataImage],
                 open_channel: Callable[[str, Sequence[tuple[str, Any]]], grpc.aio.Channel] | None = None) -> None:
        """`open_channel(address, options)`: TLS and broker credentials when security is on
        (`security.BrokerSecurity.open_channel`); default plaintext."""
        self._open = open_channel or (lambda address, options: grpc.aio.insecure_channel(address, options=options))
        self._dial = dict(dial)
        self._voters = tuple(voters)
        self._image = image  # the current metadata image (the quorum exists only once started)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def broker_address(self, broker_id: int) -> str | None:
        if broker_id in self._dial:
            return self._dial[broker_id]
        reg = self._image().broker(broker_id)
        return None if reg is None else f"{reg.host}:{reg.port}"

    def replication_address(self, broker_id: int) -> str | None:
        """Where broker `broker_id` serves the internal replication transport (None: it does
        not; fetch from it over gRPC). Not redirected by `--dial`: the chaos proxy sits on gRPC
        links only."""
        reg = self._image().broker(broker_id)
        return None if reg is None or not reg.replication_port else f"{reg.host}:{reg.replication_port}"

    def channel(self, address: str) -> grpc.aio.Channel:
        address = self._dial_address(address)
        ch = self._channels.get(address)
        if ch is None:
            ch = self._open(address, channel_options())
            self._channels[address] = ch
        return ch

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.close()

    def _dial_address(self, address: str) -> str:
        """A peer's registered or voter-list address -> the `--dial` address for that peer, if any."""
        if not self._dial:
            return address
        for voter in self._voters:
            if voter.rpc_address == address and voter.node_id in self._dial:
                return self._dial[voter.node_id]
        image = self._image()
        for broker_id, dial in self._dial.items():
            reg = image.broker(broker_id)
            if reg is not None and f"{reg.host}:{reg.port}" == address:
                return dial
        return address
