"""Everything between Python and dbt: the runner, generated sources and contract macros, relations."""
