package EnvProxy::Hook;

# Resolves EnvProxy secret references read through %ENV.
#
# Perl copies the environment into %ENV once, at start, and reads %ENV without calling libc
# getenv, so libenvproxy.so never sees those reads. The library appends
# `-I<hooks>/perl -MEnvProxy::Hook` to PERL5OPT at load, so this module is loaded before the
# program's own code. It runs in every Perl process, so it only checks whether the environment
# contains a reference and, if so, loads EnvProxy::Hook::Env, which puts a tied hash in place
# of %ENV that requests the value of each reference read.

use strict;

our $VERSION = '0.1.0';

sub is_reference {
    my ($value) = @_;
    return defined $value && $value =~ /\A(?:vault|envproxy|k8s):/;
}

sub hook_needed {
    my ($environment) = @_;
    return 0 if ($environment->{ENVPROXY_ENABLED} // '') =~ /\A(?:0|false|no|off)\z/i;
    return 0 if ($environment->{ENVPROXY_NO_PERL} // '') =~ /\A(?:1|true|yes)\z/i;
    return 1 if ($environment->{ENVPROXY_LOOKUP_UNSET} // '') eq '1';
    for my $name (keys %$environment) {
        return 1 if $name !~ /\AENVPROXY_/ && is_reference($environment->{$name});
    }
    return 0;
}

# An error here would stop the program before its first line, so it is reported and the
# program goes on reading references, as the library does when the agent is unreachable.
if (hook_needed(\%ENV)) {
    my $loaded = eval {
        require EnvProxy::Hook::Env;
        EnvProxy::Hook::Env::install();
        1;
    };
    syswrite(STDERR, "envproxy[$$]: the Perl hook failed to load, %ENV shows references: $@")
      unless $loaded;
}

1;
