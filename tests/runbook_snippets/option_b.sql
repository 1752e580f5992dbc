SELECT
    COUNT(*) as total_events,
    SUM(CASE WHEN total_tokens > 0 THEN 1 ELSE 0 END) as with_total,
    SUM(CASE WHEN prompt_tokens IS NULL AND completion_tokens IS NULL THEN 1 ELSE 0 END) as total_only_nulls
FROM llm_usage_events;
