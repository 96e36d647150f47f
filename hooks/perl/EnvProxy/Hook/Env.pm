package EnvProxy::Hook::Env;

# The tied hash that EnvProxy::Hook puts in place of %ENV.
#
# Nothing in Perl's core calls libc getenv for an arbitrary name (POSIX::getenv reads %ENV), so
# this module speaks the agent's v2 protocol itself, with the library's rules:
#
# - names starting with ENVPROXY_ are never resolved;
# - values are cached for ENVPROXY_CACHE_TTL seconds (with 0, every read sends a request);
# - one request waits at most ENVPROXY_TIMEOUT_MS. After a failure to reach the agent, requests
#   fail at once for one second and the last value is served;
# - ENVPROXY_ON_ERROR (reference, unset, exit) selects what an unresolvable reference reads as,
#   with one stderr line per variable;
# - ENVPROXY_LOOKUP_UNSET=1 also sends requests for names absent from %ENV;
# - requests go only to an agent running as this user or as root (SO_PEERCRED).
#
# Writes to %ENV (assignment, delete, local, clearing) reach the original %ENV and so the C
# environment that child processes inherit. A value written that equals a value read through
# this hook is written as its reference instead, so `local $ENV{X}` and
# `$ENV{COPY} = $ENV{SECRET}` hand children the reference, never the value. `keys`, `exists`
# and `scalar %ENV` read the raw environment, while `values`, `each` and copies of %ENV read
# resolved values. Values are never logged.

# `warnings` and `%!` are left out: loading warnings.pm and Errno.pm costs more at each Perl
# start than the rest of the hook.
use strict;

my $RETRY_AFTER = 1.0;
# The timeout of the request in progress in milliseconds, for the timeout messages.
our $REQUEST_TIMEOUT_MS = 0;
my $EXIT_CONFIG = 78;
my $MAX_KEY_LEN = 4096;
my $MAX_VALUE_LEN = 16 * 1024;
# Written values shorter than this are kept as they are when they equal a secret read under
# another name, so short ordinary settings are not turned into references by chance.
my $MIN_RENAMED_LEN = 8;

sub settings_from {
    my ($environment) = @_;
    my $number = sub {
        my ($name, $default) = @_;
        my $text = $environment->{$name};
        return $default unless defined $text;
        if ($text =~ /\A\s*0*(\d+)\s*\z/) {
            my ($digits, $max) = ($1, ~0);
            # Larger numbers would silently become floating point.
            return $digits + 0
              if length($digits) < length($max)
              || (length($digits) == length($max) && $digits le $max);
            diag("$name=\"$text\" is too large (the maximum is $max); using the default $default");
            return $default;
        }
        diag("$name=\"$text\" is not a whole number; using the default $default");
        return $default;
    };
    my $timeout_ms = $number->('ENVPROXY_TIMEOUT_MS', 2000);
    if ($timeout_ms == 0) {
        diag('ENVPROXY_TIMEOUT_MS=0 would fail every request; using the default 2000');
        $timeout_ms = 2000;
    }
    my $on_error = $environment->{ENVPROXY_ON_ERROR} // '';
    if ($on_error eq '') {
        $on_error = 'reference';
    } elsif ($on_error !~ /\A(?:reference|unset|exit)\z/) {
        diag("ENVPROXY_ON_ERROR=\"$on_error\" is not one of reference, unset, exit; using reference");
        $on_error = 'reference';
    }
    return {
        ttl => $number->('ENVPROXY_CACHE_TTL', 30),
        timeout => $timeout_ms / 1000,
        on_error => $on_error,
        lookup_unset => ($environment->{ENVPROXY_LOOKUP_UNSET} // '') eq '1',
        debug => ($environment->{ENVPROXY_DEBUG} // '') eq '1',
        socket => socket_path($environment),
    };
}

sub socket_path {
    my ($environment) = @_;
    my $socket = $environment->{ENVPROXY_SOCKET};
    return $socket if defined $socket && $socket ne '';
    my $runtime = $environment->{XDG_RUNTIME_DIR};
    return "$runtime/envproxy/agent.sock" if defined $runtime && $runtime =~ m{\A/};
    return "/tmp/envproxy-$</agent.sock";
}

# Writes `envproxy[PID]: MESSAGE` to stderr with one syswrite, as the library does.
sub diag {
    my ($message) = @_;
    $message =~ s/([\x00-\x1f\x7f])/sprintf('\\x%02x', ord $1)/ge;
    syswrite(STDERR, "envproxy[$$]: $message\n");
    return;
}

# Replaces %ENV with a hash tied to EnvProxy::Hook::Env. The original %ENV, whose magic keeps
# the C environment in step, stays behind it and receives every write. The original is not
# tied in place, because Perl would then also copy each assigned value into the C environment
# after the hook had written the reference there.
sub install {
    my $raw = {%ENV};
    my $settings = settings_from($raw);
    my $real = \%ENV;
    my %resolving;
    tie %resolving, 'EnvProxy::Hook::Env', EnvProxy::Hook::Env->new($raw, $real, $settings);
    *ENV = \%resolving;
    return 1;
}

sub uninstall {
    my $resolver = tied %ENV;
    *ENV = $resolver->{real} if $resolver && $resolver->isa('EnvProxy::Hook::Env');
    return;
}

sub new {
    my ($class, $raw, $real, $settings) = @_;
    return bless {
        # a plain copy of the environment, read by the tied methods
        raw => $raw,
        # the original %ENV, whose magic writes the C environment
        real => $real,
        settings => $settings,
        # name => { reference, value, fresh_until, retry_until, reported }
        cache => {},
        # value => reference, for every value this process read through the hook
        served => {},
        connection => undef,
        connection_pid => 0,
        down_until => 0,
        last_failure => '',
    }, $class;
}

sub TIEHASH {
    my ($class, $self) = @_;
    return $self;
}

sub FETCH {
    my ($self, $name) = @_;
    my $raw = $self->{raw}{$name};
    return $raw if $name =~ /\AENVPROXY_/;
    if (!defined $raw) {
        return undef unless $self->{settings}{lookup_unset} && $name ne '' && $name !~ /[=\0]/;
        return $self->resolve($name, undef);
    }
    return $raw unless EnvProxy::Hook::is_reference($raw);
    return $self->resolve($name, $raw);
}

sub STORE {
    my ($self, $name, $value) = @_;
    $value = $self->reference_for($name, $value);
    $self->{raw}{$name} = $value;
    $self->{real}{$name} = $value;
    return;
}

sub DELETE {
    my ($self, $name) = @_;
    return undef unless exists $self->{raw}{$name};
    my $old = $self->FETCH($name);
    delete $self->{raw}{$name};
    delete $self->{real}{$name};
    return $old;
}

sub CLEAR {
    my ($self) = @_;
    %{ $self->{raw} } = ();
    %{ $self->{real} } = ();
    return;
}

sub EXISTS { return exists $_[0]{raw}{ $_[1] } }

sub FIRSTKEY {
    my ($self) = @_;
    keys %{ $self->{raw} };
    return scalar each %{ $self->{raw} };
}

sub NEXTKEY { return scalar each %{ $_[0]{raw} } }

sub SCALAR { return scalar %{ $_[0]{raw} } }

# Returns what to store for `$value` written to `$name`: the reference when the value is one
# this hook read for that name (or, when long enough, for another name), else `$value`.
sub reference_for {
    my ($self, $name, $value) = @_;
    return $value unless defined $value && exists $self->{served}{$value};
    my $entry = $self->{cache}{$name};
    if ($entry && defined $entry->{value} && $entry->{value} eq $value && defined $entry->{reference}) {
        return $entry->{reference};
    }
    return $value if length($value) < $MIN_RENAMED_LEN;
    return $self->{served}{$value};
}

sub debug {
    my ($self, $name, $decision) = @_;
    diag("$name: $decision") if $self->{settings}{debug};
    return;
}

# Returns the value a read of `$name` yields; `$reference` is undef for a name absent from %ENV.
sub resolve {
    my ($self, $name, $reference) = @_;
    my $settings = $self->{settings};
    my $now = now();
    my $key = $reference // '';
    my $entry = $self->{cache}{$name};
    $entry = undef if $entry && $entry->{reference_key} ne $key;
    if ($entry) {
        if ($settings->{ttl} > 0 && $entry->{answered} && $now < $entry->{fresh_until}) {
            return $entry->{value};
        }
        if ($now < $entry->{retry_until}) {
            if (defined $entry->{value}) {
                $self->debug($name, 'agent unreachable, serving the last value (stale)');
                return $entry->{value};
            }
            return $self->error_result($name, $reference);
        }
    } else {
        $entry = $self->{cache}{$name} = {
            reference => $reference,
            reference_key => $key,
            value => undef,
            answered => 0,
            fresh_until => 0,
            retry_until => 0,
            reported => 0,
        };
    }

    my ($status, $payload) = $self->request($name, $reference);
    my $fresh_until = now() + $settings->{ttl};
    if ($status eq 'found') {
        $entry->{value} = $payload;
        $entry->{answered} = 1;
        $entry->{fresh_until} = $fresh_until;
        $entry->{retry_until} = 0;
        $entry->{reported} = 0;
        $self->{served}{$payload} = $reference if defined $reference;
        $self->debug($name, 'resolved by the agent');
        return $payload;
    }
    if ($status eq 'not_found' && !defined $reference) {
        $entry->{value} = undef;
        $entry->{answered} = 1;
        $entry->{fresh_until} = $fresh_until;
        $self->debug($name, 'not set, and the agent does not have it');
        return undef;
    }
    if ($status eq 'passthrough') {
        $self->debug($name, 'the agent says the value is not a reference');
        return $reference;
    }
    my $reason =
        $status eq 'not_found' ? "the agent's backend has no such key"
      : $status eq 'error' ? "the agent answered: $payload"
      : $payload;
    return $self->failure($name, $reference, $entry, $reason, $status ne 'unreachable');
}

sub failure {
    my ($self, $name, $reference, $entry, $reason, $authoritative) = @_;
    if ($authoritative) {
        $entry->{value} = undef;
        $entry->{answered} = 0;
    }
    $entry->{retry_until} = now() + $RETRY_AFTER;
    if (!defined $reference) {
        $self->debug($name, "lookup of an unset name failed: $reason");
        return undef;
    }
    if (defined $entry->{value}) {
        $self->debug($name, "serving the last value (stale): $reason");
        return $entry->{value};
    }
    my $on_error = $self->{settings}{on_error};
    if (!$entry->{reported} || $on_error eq 'exit') {
        $entry->{reported} = 1;
        my $consequence =
            $on_error eq 'unset' ? '%ENV reads undef (ENVPROXY_ON_ERROR=unset)'
          : $on_error eq 'exit' ? "exiting with status $EXIT_CONFIG (ENVPROXY_ON_ERROR=exit)"
          : '%ENV reads the reference unchanged (ENVPROXY_ON_ERROR=reference)';
        diag("$name: cannot resolve $reference: $reason; $consequence");
    }
    return $self->error_result($name, $reference);
}

sub error_result {
    my ($self, $name, $reference) = @_;
    return undef unless defined $reference;
    my $on_error = $self->{settings}{on_error};
    return undef if $on_error eq 'unset';
    if ($on_error eq 'exit') {
        require POSIX;
        POSIX::_exit($EXIT_CONFIG);
    }
    return $reference;
}

sub now {
    require Time::HiRes;
    return Time::HiRes::clock_gettime(Time::HiRes::CLOCK_MONOTONIC());
}

# Sends one request and returns (status, payload): status is found, not_found, error or
# passthrough as the agent answered, or unreachable with the reason as payload.
sub request {
    my ($self, $name, $reference) = @_;
    if (length($name) > $MAX_KEY_LEN || (defined $reference && length($reference) > $MAX_VALUE_LEN)) {
        return ('unreachable',
            "the request cannot be sent: the name or reference exceeds the protocol's limit "
              . "($MAX_KEY_LEN-byte names, $MAX_VALUE_LEN-byte references)");
    }
    if (now() < $self->{down_until}) {
        return ('unreachable',
            "$self->{last_failure} (a recent request failed; retrying after a short pause)");
    }
    my $frame = defined $reference
      ? pack('C n/a* n/a*', 2, $name, $reference)
      : pack('C n/a*', 1, $name);
    my $deadline = now() + $self->{settings}{timeout};
    local $REQUEST_TIMEOUT_MS = sprintf('%.0f', $self->{settings}{timeout} * 1000);
    my @answer;
    for my $attempt (1, 2) {
        my $reused = defined $self->{connection} && $self->{connection_pid} == $$;
        if (!$reused && defined $self->{connection}) {
            # Inherited across fork: the parent keeps using it, so this process opens its own.
            close $self->{connection};
            $self->{connection} = undef;
        }
        @answer = eval {
            $self->{connection} //= $self->open_connection($deadline);
            $self->{connection_pid} = $$;
            exchange($self->{connection}, $frame, $deadline, $self->{settings}{socket});
        };
        last unless $@;
        my $error = $@;
        chomp $error;
        close $self->{connection} if $self->{connection};
        $self->{connection} = undef;
        # A reused connection that the agent had closed (an agent restart) gets one retry.
        next if $reused && $attempt == 1 && $error =~ /closed the connection|Broken pipe|reset by peer/;
        $self->{last_failure} = $error;
        $self->{down_until} = now() + $RETRY_AFTER;
        return ('unreachable', $error);
    }
    $self->{down_until} = 0;
    return @answer;
}

sub open_connection {
    my ($self, $deadline) = @_;
    require Socket;
    require Fcntl;
    my $path = $self->{settings}{socket};
    my $hint = 'start envproxy-agent, run the program under `envproxy run`, '
      . 'or point ENVPROXY_SOCKET at a running agent';
    die "the socket path $path is longer than a Unix socket address allows (107 bytes); "
      . "set ENVPROXY_SOCKET to a shorter path\n"
      if length($path) > 107;
    die "no agent socket at $path ($hint)\n" unless -e $path;
    socket(my $socket, Socket::AF_UNIX(), Socket::SOCK_STREAM(), 0)
      or die "cannot create a socket: $!\n";
    my $flags = fcntl($socket, Fcntl::F_GETFL(), 0);
    fcntl($socket, Fcntl::F_SETFL(), $flags | Fcntl::O_NONBLOCK());
    my $address = Socket::pack_sockaddr_un($path);
    until (connect($socket, $address)) {
        # A full listen backlog: try again until the deadline.
        my ($error, $errno) = ("$!", $! + 0);
        die "cannot connect to the agent at $path: $error ($hint)\n"
          unless errno_is($errno, 'EAGAIN');
        my $left = $deadline - now();
        die "the agent at $path did not answer within $REQUEST_TIMEOUT_MS ms (ENVPROXY_TIMEOUT_MS)\n"
          if $left <= 0;
        select(undef, undef, undef, $left < 0.01 ? $left : 0.01);
    }
    my $credentials = getsockopt($socket, Socket::SOL_SOCKET(), Socket::SO_PEERCRED());
    die "cannot read the agent's credentials on $path: $!\n" unless defined $credentials;
    my (undef, $agent_uid) = unpack('l L L', $credentials);
    if ($agent_uid != $< && $agent_uid != 0) {
        die "the agent socket $path is served by uid $agent_uid, not by this user (uid $<) "
          . "or root; requests are not sent to it (check who created the socket, or point "
          . "ENVPROXY_SOCKET at your own agent)\n";
    }
    return $socket;
}

sub exchange {
    my ($socket, $frame, $deadline, $path) = @_;
    my $written = 0;
    while ($written < length $frame) {
        wait_for($socket, 1, $deadline, $path);
        # MSG_NOSIGNAL: a peer that closed the socket yields EPIPE instead of killing the
        # program with SIGPIPE.
        my $n = send($socket, substr($frame, $written), Socket::MSG_NOSIGNAL());
        if (!defined $n) {
            my ($error, $errno) = ("$!", $! + 0);
            next if errno_is($errno, 'EAGAIN', 'EINTR');
            die "I/O error talking to the agent at $path: $error\n";
        }
        $written += $n;
    }
    my $header = read_exactly($socket, 3, $deadline, $path);
    my ($status, $length) = unpack('C n', $header);
    die "the agent at $path sent a malformed response: unknown response status byte $status "
      . "(expected 0, 1, 2 or 3)\n"
      if $status > 3;
    my $payload = $length ? read_exactly($socket, $length, $deadline, $path, 1) : '';
    return ('found', $payload) if $status == 0;
    return ('not_found', '') if $status == 1;
    return ('error', $payload) if $status == 2;
    return ('passthrough', '');
}

# Reads `$wanted` bytes. With `$is_payload` set, the bytes are the payload that a received
# header promised, so a closed connection or the deadline is reported as an incomplete response
# with how many of those bytes arrived.
sub read_exactly {
    my ($socket, $wanted, $deadline, $path, $is_payload) = @_;
    my $buffer = '';
    my $incomplete = "the agent at $path sent an incomplete response:";
    while (length($buffer) < $wanted) {
        my $received = length $buffer;
        if (!eval { wait_for($socket, 0, $deadline, $path); 1 }) {
            die $@ unless $is_payload;
            die "$incomplete $received of the $wanted bytes its header promised arrived within "
              . "$REQUEST_TIMEOUT_MS ms (ENVPROXY_TIMEOUT_MS)\n";
        }
        my $n = sysread($socket, $buffer, $wanted - $received, $received);
        my $closed = "$incomplete the header promised $wanted bytes, and the connection closed "
          . "after $received\n";
        if (!defined $n) {
            my ($error, $errno) = ("$!", $! + 0);
            next if errno_is($errno, 'EAGAIN', 'EINTR');
            # A peer that closes with the request still unread resets the connection.
            die $closed if $is_payload && errno_is($errno, 'ECONNRESET');
            die "I/O error talking to the agent at $path: $error\n";
        }
        if ($n == 0) {
            die $closed if $is_payload;
            die "the agent at $path closed the connection without answering\n";
        }
    }
    return $buffer;
}

# Returns whether errno value `$errno` is one of the Errno constants named, loading Errno.pm
# only on these error paths.
sub errno_is {
    my ($errno, @names) = @_;
    require Errno;
    for my $name (@names) {
        my $constant = Errno->can($name);
        return 1 if $constant && $errno == $constant->();
    }
    return 0;
}

sub wait_for {
    my ($socket, $writing, $deadline, $path) = @_;
    my $left = $deadline - now();
    my $bits = '';
    vec($bits, fileno($socket), 1) = 1;
    my $ready = $left > 0
      ? ($writing ? select(undef, my $w = $bits, undef, $left) : select(my $r = $bits, undef, undef, $left))
      : 0;
    die "the agent at $path did not answer within $REQUEST_TIMEOUT_MS ms (ENVPROXY_TIMEOUT_MS)\n"
      if $ready == 0;
    return;
}

1;
