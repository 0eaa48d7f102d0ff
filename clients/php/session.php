<?php
/**
 * Registers msession as PHP's session save handler. One line of set-up:
 *
 *     ; php.ini
 *     auto_prepend_file = /path/to/clients/php/session.php
 *     session.save_path = "10.0.0.1:8086,10.0.0.2:8086"
 *     msession.mode = lock          ; or merge (default lock)
 *
 * (or `require '/path/to/clients/php/session.php';` before session_start()).
 * It loads the Msession\ classes, not the msession_* functions (include
 * msession.php for those).
 * The node list is read from session.save_path when the session opens
 * (default 127.0.0.1:8086). The settings msession.mode, msession.lock_lease,
 * msession.lock_wait, msession.sid_length, msession.timeout and
 * msession.persistent (1, the default: connections outlive the request and
 * are reused by the worker's next one) and msession.route (1, the default
 * when save_path lists several nodes: each session's requests go straight
 * to its owner in the farm, from a table cached for 5 s) are read with
 * get_cfg_var() (php.ini or `php -d`), and are overridden by the environment
 * variables MSESSION_MODE, MSESSION_LOCK_LEASE, ... (see
 * src/SessionHandler.php and README.md).
 */

require_once __DIR__ . '/src/autoload.php';  // the classes only: the msession_* functions are msession.php's
// What every request uses, loaded directly (cheaper than through the autoloader).
require_once __DIR__ . '/src/Protocol.php';
require_once __DIR__ . '/src/Commands.php';
require_once __DIR__ . '/src/Client.php';
require_once __DIR__ . '/src/SessionHandler.php';

if (session_status() !== PHP_SESSION_ACTIVE) {
    session_set_save_handler(new Msession\SessionHandler(), true);
}
