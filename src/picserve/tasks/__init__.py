"""Durable tasks and their queue on PostgreSQL (procrastinate), embedded or shared."""

# every task kind's spec class is registered before a row is read (domain.spec_from_json)
from picserve import domain_tools as _domain_tools  # noqa: F401
