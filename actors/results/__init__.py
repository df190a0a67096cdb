"""Results into QuDemo's Supabase tables: the client, the rows, the writer and its lanes."""
