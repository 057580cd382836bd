#!/usr/bin/perl
# Regenerates the small MaxMind DB fixtures that PosternNativeTests use, so the
# tests pass on a plain clone without MaxMind's own test databases.
#
#   apt-get install libmaxmind-db-writer-perl
#   cd Tests/PosternNativeTests/Fixtures && perl make-fixtures.pl
#
# Only documentation address space is used (RFC 5737 for IPv4, RFC 3849 for
# IPv6) and documentation AS numbers (RFC 5398), plus one 32-bit private ASN to
# exercise values above 2^31. The build epoch is fixed, so the output is
# byte-for-byte reproducible.
use strict;
use warnings;
use utf8;

use MaxMind::DB::Writer::Tree;

my $BUILD_EPOCH = 1_700_000_000;    # 2023-11-14T22:13:20Z

my %types = (
    country                        => 'map',
    registered_country             => 'map',
    continent                      => 'map',
    names                          => 'map',
    iso_code                       => 'utf8_string',
    code                           => 'utf8_string',
    en                             => 'utf8_string',
    geoname_id                     => 'uint32',
    autonomous_system_number       => 'uint32',
    autonomous_system_organization => 'utf8_string',
    note                           => 'utf8_string',
);

sub new_tree {
    my (%args) = @_;
    my $tree = MaxMind::DB::Writer::Tree->new(
        ip_version               => $args{ip_version} // 6,
        record_size              => 24,
        database_type            => $args{database_type},
        languages                => ['en'],
        description              => { en => $args{description} },
        map_key_type_callback    => sub { $types{ $_[0] } },
        remove_reserved_networks => 0,    # documentation ranges are "reserved"
        alias_ipv6_to_ipv4       => ( $args{ip_version} // 6 ) == 6 ? 1 : 0,
    );
    $tree->_set_build_epoch($BUILD_EPOCH);
    return $tree;
}

sub write_tree {
    my ( $tree, $file ) = @_;
    open my $fh, '>:raw', $file or die "$file: $!";
    $tree->write_tree($fh);
    close $fh or die "$file: $!";
    print "wrote $file\n";
}

sub country {
    my ( $iso, $name, $continent, $continent_name ) = @_;
    return {
        country   => { iso_code => $iso, names => { en => $name } },
        continent => { code => $continent, names => { en => $continent_name } },
        registered_country => { iso_code => $iso, names => { en => $name } },
    };
}

# Country database: country + continent, like GeoIP2-Country / GeoLite2-Country.
{
    my $tree = new_tree(
        database_type => 'Postern-Test-Country',
        description   => 'Postern test fixture: countries',
    );
    $tree->insert_network( '192.0.2.0/24',    country( 'GB', 'United Kingdom', 'EU', 'Europe' ) );
    $tree->insert_network( '198.51.100.0/25', country( 'SE', 'Sweden', 'EU', 'Europe' ) );
    $tree->insert_network( '198.51.100.128/25', country( 'US', 'United States', 'NA', 'North America' ) );
    # Only the registered country is known (satellite / anycast style entry).
    $tree->insert_network( '203.0.113.0/24',
        { registered_country => { iso_code => 'JP', names => { en => 'Japan' } } } );
    $tree->insert_network( '2001:db8:1::/48', country( 'DE', 'Germany', 'EU', 'Europe' ) );
    $tree->insert_network( '2001:db8:2::/48', country( 'BR', 'Brazil', 'SA', 'South America' ) );
    # An entry with none of the fields Postern reads.
    $tree->insert_network( '2001:db8:3::/48', { note => 'nothing useful here' } );
    write_tree( $tree, 'postern-country.mmdb' );
}

# ASN database, like GeoLite2-ASN.
{
    my $tree = new_tree(
        database_type => 'Postern-Test-ASN',
        description   => 'Postern test fixture: autonomous systems',
    );
    $tree->insert_network( '192.0.2.0/24',
        { autonomous_system_number => 64496, autonomous_system_organization => 'Example Transit Ltd' } );
    $tree->insert_network( '198.51.100.0/24',
        { autonomous_system_number => 4_200_000_001, autonomous_system_organization => 'Example Private 32-bit AS' } );
    $tree->insert_network( '2001:db8:1::/48',
        { autonomous_system_number => 64511, autonomous_system_organization => 'Exämple Ünicode GmbH' } );
    # ASN without an organisation.
    $tree->insert_network( '2001:db8:2::/48', { autonomous_system_number => 65551 } );
    write_tree( $tree, 'postern-asn.mmdb' );
}

# IPv4-only database: IPv6 lookups in it must read as "unknown".
{
    my $tree = new_tree(
        ip_version    => 4,
        database_type => 'Postern-Test-Country-IPv4',
        description   => 'Postern test fixture: IPv4-only tree',
    );
    $tree->insert_network( '192.0.2.0/24', country( 'NL', 'Netherlands', 'EU', 'Europe' ) );
    write_tree( $tree, 'postern-ipv4-only.mmdb' );
}

# A database whose search tree is fine but one record in the data section is
# corrupt: the value "CORRUPTME" (a 9-byte UTF-8 string, control byte 0x49)
# gets control byte 0x69, a 9-byte double, which the format forbids.
{
    my $tree = new_tree(
        database_type => 'Postern-Test-Corrupt-Data',
        description   => 'Postern test fixture: one corrupt record',
    );
    $tree->insert_network( '192.0.2.0/24', country( 'GB', 'United Kingdom', 'EU', 'Europe' ) );
    $tree->insert_network( '198.51.100.0/24',
        { %{ country( 'SE', 'Sweden', 'EU', 'Europe' ) }, note => 'CORRUPTME' } );
    my $bytes = '';
    open my $fh, '>:raw', \$bytes or die;
    $tree->write_tree($fh);
    close $fh;
    my $count = () = $bytes =~ /\x49CORRUPTME/g;
    die "expected exactly one CORRUPTME string, found $count" unless $count == 1;
    $bytes =~ s/\x49CORRUPTME/\x69CORRUPTME/;
    open my $out, '>:raw', 'postern-corrupt-data.mmdb' or die $!;
    print {$out} $bytes;
    close $out or die $!;
    print "wrote postern-corrupt-data.mmdb\n";
}

# Not a database at all, and a database cut short (its metadata is missing).
{
    open my $out, '>:raw', 'postern-not-a-database.mmdb' or die $!;
    print {$out} "This is not a MaxMind DB file.\n" x 8;
    close $out or die $!;
    print "wrote postern-not-a-database.mmdb\n";

    open my $in, '<:raw', 'postern-country.mmdb' or die $!;
    local $/;
    my $whole = <$in>;
    close $in;
    open $out, '>:raw', 'postern-truncated.mmdb' or die $!;
    print {$out} substr( $whole, 0, int( length($whole) / 2 ) );
    close $out or die $!;
    print "wrote postern-truncated.mmdb\n";
}
