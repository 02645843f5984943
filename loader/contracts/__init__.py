"""Data contracts: the YAML files beside this module and their pydantic model."""

from loader.contracts.model import Column, Contract, Entity, load_contract

__all__ = ["Column", "Contract", "Entity", "load_contract"]
