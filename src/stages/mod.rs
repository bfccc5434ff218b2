//! Stage kinds: each a function from its inputs to a cache entry.
