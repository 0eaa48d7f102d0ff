<?php
// Loads the msession client library (no Composer needed).
require_once __DIR__ . '/MsessionException.php';
require_once __DIR__ . '/Protocol.php';
require_once __DIR__ . '/Commands.php';
require_once __DIR__ . '/Routes.php';
require_once __DIR__ . '/Client.php';
require_once __DIR__ . '/Pipeline.php';
if (file_exists(__DIR__ . '/SessionHandler.php')) {
    require_once __DIR__ . '/SessionHandler.php';
}
