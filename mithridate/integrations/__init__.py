"""Adapters to other libraries, each imported only when used (``import
mithridate.integrations.art`` needs the ``art`` extra)."""
