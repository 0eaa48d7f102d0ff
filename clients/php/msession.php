<?php
/**
 * msession for PHP 8: include this file to get the msession_* functions of
 * the old ext/msession (PHP 4.2-4.3) and the Msession\ classes (Client,
 * Pipeline, MsessionException, SessionHandler).
 *
 *     require '/path/to/clients/php/msession.php';
 *     msession_connect('10.0.0.1,10.0.0.2', '8086');
 *     msession_set($sid, 'user', 'alice');
 *
 * The functions keep the old signatures and return conventions: on an error
 * they raise an E_USER_WARNING naming the protocol error ("msession_set():
 * NOSESSION: no such session") and return false (null for the functions that
 * returned nothing). Each is defined only if it does not exist, so the old
 * extension, if present, keeps its own. Our additions, within the same
 * signatures: msession_connect() takes a comma-separated node list (failover);
 * msession_get()'s default may be omitted ("").
 *
 * This file is not strict_types on purpose: like the old functions, these
 * accept ints where strings are expected.
 */

require_once __DIR__ . '/src/autoload.php';

/** @internal The connection of the msession_* functions (one per process, like the old extension's). */
final class MsessionFunctions
{
    public static ?Msession\Client $client = null;

    /** An optional argument as a string: null stays null (the old functions' omitted arguments). */
    public static function str(mixed $v): ?string
    {
        return $v === null ? null : (string)$v;
    }

    /** Runs $fn against the connection; on an error: warning, and $onError. */
    public static function run(string $name, callable $fn, mixed $onError = false): mixed
    {
        if (self::$client === null) {
            trigger_error("$name(): not connected to msession (call msession_connect first)", E_USER_WARNING);
            return $onError;
        }
        try {
            return $fn(self::$client);
        } catch (Msession\MsessionException $e) {
            trigger_error("$name(): " . $e->getMessage(), E_USER_WARNING);
            return $onError;
        } catch (ValueError | ArgumentCountError $e) {  // a bad argument, refused before sending
            trigger_error("$name(): BADARG: " . $e->getMessage(), E_USER_WARNING);
            return $onError;
        }
    }
}

if (!function_exists('msession_connect')) {
    /** Connects to $host (or a comma-separated list "h1,h2:8087": failover) on $port. */
    function msession_connect($host, $port = 8086)
    {
        $nodes = [];
        foreach (explode(',', (string)$host) as $h) {
            $h = trim($h);
            if ($h === '') {
                continue;
            }
            try {
                $nodes[] = Msession\Client::target(Msession\Client::parseNode($h, (int)$port));
            } catch (InvalidArgumentException $e) {
                trigger_error('msession_connect(): ' . $e->getMessage(), E_USER_WARNING);
                return false;
            }
        }
        try {
            $client = new Msession\Client($nodes);
            $client->connect();
        } catch (Msession\MsessionException | InvalidArgumentException $e) {
            trigger_error('msession_connect(): ' . $e->getMessage(), E_USER_WARNING);
            return false;
        }
        MsessionFunctions::$client?->close();
        MsessionFunctions::$client = $client;
        return true;
    }
}

if (!function_exists('msession_disconnect')) {
    function msession_disconnect()
    {
        MsessionFunctions::$client?->close();
        MsessionFunctions::$client = null;
        return null;
    }
}

if (!function_exists('msession_count')) {
    /** The number of live sessions. */
    function msession_count()
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->count());
    }
}

if (!function_exists('msession_create')) {
    /** Creates a session; false (DUPSESSION warning) if it exists. */
    function msession_create($session, $classname = null, $data = null)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->create(
            (string)$session, MsessionFunctions::str($classname), MsessionFunctions::str($data)));
    }
}

if (!function_exists('msession_destroy')) {
    /** Destroys a session; true also when it did not exist. */
    function msession_destroy($name)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->destroy((string)$name));
    }
}

if (!function_exists('msession_set')) {
    function msession_set($session, $name, $value)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->set((string)$session, (string)$name, (string)$value));
    }
}

if (!function_exists('msession_get')) {
    /** The variable's value (string), or $value when the variable is absent. */
    function msession_get($session, $name, $value = '')
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->get((string)$session, (string)$name, MsessionFunctions::str($value)));
    }
}

if (!function_exists('msession_get_array')) {
    /** name => value of every variable of the session. */
    function msession_get_array($session)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->getArray((string)$session));
    }
}

if (!function_exists('msession_set_array')) {
    /** Sets every name => value pair of $tuples at once (atomically); returns null. */
    function msession_set_array($session, $tuples)
    {
        if (!is_array($tuples)) {
            trigger_error('msession_set_array(): expects an array', E_USER_WARNING);
            return null;
        }
        foreach ($tuples as $k => $v) {
            if (!is_scalar($v) && $v !== null) {
                trigger_error("msession_set_array(): the value of '$k' is not a string", E_USER_WARNING);
                return null;
            }
            $tuples[$k] = (string)$v;
        }
        MsessionFunctions::run(__FUNCTION__, fn($c) => $c->setArray((string)$session, $tuples), null);
        return null;
    }
}

if (!function_exists('msession_getdata')) {
    /** The session's data string; "" (and no warning) for a missing session. */
    function msession_getdata($session)
    {
        return MsessionFunctions::run('msession_getdata', function ($c) use ($session) {
            try {
                return $c->getData((string)$session);
            } catch (Msession\MsessionException $e) {
                if ($e->getErrorName() === 'NOSESSION') {
                    return '';
                }
                throw $e;
            }
        });
    }
}

if (!function_exists('msession_get_data')) {
    function msession_get_data($session)
    {
        return msession_getdata($session);
    }
}

if (!function_exists('msession_setdata')) {
    /** Sets the session's data string, creating the session if needed. */
    function msession_setdata($session, $value)
    {
        return MsessionFunctions::run('msession_setdata', fn($c) => $c->setData((string)$session, (string)$value));
    }
}

if (!function_exists('msession_set_data')) {
    function msession_set_data($session, $value)
    {
        return msession_setdata($session, $value);
    }
}

if (!function_exists('msession_inc')) {
    /** Adds 1 to the variable (a missing one counts as 0); the new value as a string. */
    function msession_inc($session, $name)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => (string)$c->inc((string)$session, (string)$name));
    }
}

if (!function_exists('msession_find')) {
    /** Ids of the sessions whose variable $name equals $value. */
    function msession_find($name, $value)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->find((string)$name, (string)$value));
    }
}

if (!function_exists('msession_list')) {
    /** Ids of all sessions. */
    function msession_list()
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->list());
    }
}

if (!function_exists('msession_listvar')) {
    /** session id => value for every session that has variable $name. */
    function msession_listvar($name)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->listVar((string)$name));
    }
}

if (!function_exists('msession_lock')) {
    /** Locks the session (waiting, server-side, up to the node's lock_wait); the key (int). */
    function msession_lock($name)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->lock((string)$name));
    }
}

if (!function_exists('msession_unlock')) {
    /** Releases the lock taken with $key; the key. */
    function msession_unlock($session, $key)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->unlock((string)$session, (int)$key));
    }
}

if (!function_exists('msession_timeout')) {
    /** The session's inactivity timeout in seconds, after setting it when $param is given. */
    function msession_timeout($session, $param = null)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->timeout((string)$session, $param === null ? null : (int)$param));
    }
}

if (!function_exists('msession_uniq')) {
    /** A new, unused session id of $param characters; the session is created with it. */
    function msession_uniq($param, $classname = null, $data = null)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->uniq(
            (int)$param, MsessionFunctions::str($classname), MsessionFunctions::str($data)));
    }
}

if (!function_exists('msession_randstr')) {
    /** A random string of $param characters [a-zA-Z0-9]. */
    function msession_randstr($param)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->randstr((int)$param));
    }
}

if (!function_exists('msession_plugin')) {
    /** The answer of the node's personality plugin escape function. */
    function msession_plugin($session, $val, $param = null)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->plugin((string)$session, (string)$val, MsessionFunctions::str($param)));
    }
}

if (!function_exists('msession_call')) {
    /** Calls the plugin function $fn_name with up to four parameters. */
    function msession_call($fn_name, ...$params)
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->callFunction((string)$fn_name, ...array_map('strval', $params)));
    }
}

if (!function_exists('msession_ctl')) {
    /** $which: EXIST (default), TTL, AGE, TLA, CTIME, TOUCH or NOW, by name or number. */
    function msession_ctl($name, $which = 'EXIST')
    {
        return MsessionFunctions::run(__FUNCTION__, fn($c) => $c->ctl((string)$name, is_int($which) ? $which : (string)$which));
    }
}
