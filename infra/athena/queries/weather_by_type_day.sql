-- The weather along the routes per UTC day and transport type: of the positions with weather
-- (weather_status = 'ok'), the share with precipitation, and their mean wind speed.
-- parameters: first_day, last_day
SELECT event_date AS day, transport_type,
       count(*) AS positions,
       count_if(weather_status = 'ok') AS with_weather,
       CAST(count_if(weather_status = 'ok' AND precipitation_mm > 0) AS double)
         / nullif(count_if(weather_status = 'ok'), 0) AS precipitation_share,
       avg(CASE WHEN weather_status = 'ok' THEN wind_speed_kmh END) AS mean_wind_kmh
FROM bronze_locations
WHERE event_date BETWEEN CAST(? AS date) AND CAST(? AS date)
GROUP BY event_date, transport_type
ORDER BY day, transport_type
