//! The plan: a DAG of stage instances with their cache keys.
