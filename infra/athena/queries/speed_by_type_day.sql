-- Mean and 90th-percentile speed per UTC day and transport type, over the positions that report a speed.
-- approx_percentile is Athena's (Trino's) approximate percentile: within about 1% of rank of the exact value.
-- parameters: first_day, last_day
SELECT event_date AS day, transport_type,
       count(speed_kmh) AS positions,
       avg(speed_kmh) AS mean_speed_kmh,
       approx_percentile(speed_kmh, 0.9) AS p90_speed_kmh
FROM bronze_locations
WHERE event_date BETWEEN CAST(? AS date) AND CAST(? AS date) AND speed_kmh IS NOT NULL
GROUP BY event_date, transport_type
ORDER BY day, transport_type
