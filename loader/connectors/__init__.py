"""Intake kinds: how a load's files arrive (dashboard uploads, SFTP, local folders), behind one interface (base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loader.connectors.base import Connector
    from loader.connectors.config import LocalConnectorSettings, SftpConnectorSettings


def make_connector(cfg: SftpConnectorSettings | LocalConnectorSettings) -> Connector:
    """The connector of one connectors.yml entry, by its `type`; nothing is opened until it is used."""
    # Imported here: a package import stays light (no paramiko for an upload), and each kind is loaded when used.
    if cfg.type == "sftp":
        from loader.connectors.sftp import SftpConnector

        return SftpConnector(cfg)
    from loader.connectors.local import LocalFolder

    return LocalFolder(cfg)
