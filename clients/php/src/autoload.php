<?php
// Loads the msession client library's classes on first use (no Composer
// needed): a PHP request pays only for the classes it uses (a session
// handler on a single node never loads Routes, nor Pipeline unless a
// session expired while a request held it).
spl_autoload_register(static function (string $class): void {
    static $files = [
        'Msession\\MsessionException' => 'MsessionException.php',
        'Msession\\Protocol' => 'Protocol.php',
        'Msession\\Map' => 'Protocol.php',
        'Msession\\Commands' => 'Commands.php',
        'Msession\\Routes' => 'Routes.php',
        'Msession\\Client' => 'Client.php',
        'Msession\\NotExecuted' => 'Client.php',
        'Msession\\ConnectionFailed' => 'Client.php',
        'Msession\\Pipeline' => 'Pipeline.php',
        'Msession\\SessionHandler' => 'SessionHandler.php',
    ];
    if (isset($files[$class])) {
        require_once __DIR__ . '/' . $files[$class];
    }
});
