<?php
// The farm benchmark's page (same as clients/php/tests/farm/counter.php): increments $_SESSION[$key] and answers the new
// value. ?key=NAME (default "n"), ?sleep=MS (work done while the session is
// open), ?new=1 starts a fresh session.
if (isset($_GET['new'])) {
    session_start();
    session_regenerate_id();
} else {
    session_start();
}
$key = preg_replace('/[^a-z0-9_]/i', '', $_GET['key'] ?? 'n') ?: 'n';
$value = ($_SESSION[$key] ?? 0) + 1;
$_SESSION[$key] = $value;
if (isset($_GET['sleep'])) {
    usleep(1000 * (int)$_GET['sleep']);
}
session_write_close();
header('Content-Type: application/json');
echo json_encode(['sid' => session_id(), 'key' => $key, 'value' => $value, 'pid' => getmypid()]), "\n";
